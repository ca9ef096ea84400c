"""Dagster Pipes reporting of a trainer process (ROI-SFT and VLPO alike), optional and Dagster-free otherwise.

Every rank of a launched run inherits the Pipes environment, but only RANK 0 opens the connection: it streams
log lines, reports the final materialisation, and on failure sends the traceback to Dagster and writes it to
`<run.out_dir>/trainer_error.txt` (the asset shows its last line when the subprocess fails).
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from pathlib import Path

ERROR_FILE = "trainer_error.txt"


def is_rank0() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def open_pipes():
    """The Dagster Pipes context on rank 0 when launched by Dagster (DAGSTER_PIPES_CONTEXT set); else a null
    context that yields None."""
    if not is_rank0() or "DAGSTER_PIPES_CONTEXT" not in os.environ:
        return contextlib.nullcontext(None)
    from dagster_pipes import open_dagster_pipes  # only when launched by Dagster

    return open_dagster_pipes()


def report_failure(pipes, exc: BaseException, out_dir: str | Path | None) -> None:
    """Every rank of a multi-rank run: one line `medlvr trainer: error: rank R: Type: message` on stderr (the
    launcher's summary names only the first rank to exit, often a peer that lost its connection). Rank 0: the
    traceback to Dagster (an error log line) and to `<out_dir>/trainer_error.txt`."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        first = (str(exc).strip().splitlines() or [""])[0]
        print(f"medlvr trainer: error: rank {os.environ.get('RANK', '0')}: {type(exc).__name__}: {first}",
              file=sys.stderr, flush=True)
    if not is_rank0():
        return
    text = "".join(traceback.format_exception(exc))
    if pipes is not None:
        pipes.log.error(f"trainer failed: {type(exc).__name__}: {exc}\n{text}")
    if out_dir:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / ERROR_FILE).write_text(text)


def scalar_metrics(metrics: dict) -> dict:
    """The int / float entries of a metrics dict (what Dagster metadata and log lines take)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def format_step(step: int, metrics: dict) -> str:
    return f"step {step}: " + " ".join(f"{k}={v:.4g}" for k, v in scalar_metrics(metrics).items())
