"""Dagster Pipes reporting of a trainer process (ROI-SFT and VLPO alike), optional and Dagster-free otherwise.

Every rank of a launched run inherits the Pipes environment, but only RANK 0 opens the connection: it streams
log lines, reports the final materialisation (scalar metrics and paths), and on failure writes the traceback to
`<run.out_dir>/trainer_error.txt` and sends Dagster one line naming it (the asset shows the traceback's last line
when the subprocess fails). Messages stay small: bulk goes into files, messages carry paths.
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


MAX_MESSAGE_CHARS = 500  # a Pipes message carries a line and a path; the bulk (a traceback, metrics) is in files


def report_failure(pipes, exc: BaseException, out_dir: str | Path | None) -> None:
    """Every rank of a multi-rank run: one line `medlvr trainer: error: rank R: Type: message` on stderr (the
    launcher's summary names only the first rank to exit, often a peer that lost its connection). Rank 0: the
    traceback to `<out_dir>/trainer_error.txt`, and one short error line naming that file to Dagster (Pipes
    messages stay small: a large message is more of a line for the reader to see half-written)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        first = (str(exc).strip().splitlines() or [""])[0]
        print(f"medlvr trainer: error: rank {os.environ.get('RANK', '0')}: {type(exc).__name__}: {first}",
              file=sys.stderr, flush=True)
    if not is_rank0():
        return
    error_file = None
    if out_dir:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        error_file = Path(out_dir) / ERROR_FILE
        error_file.write_text("".join(traceback.format_exception(exc)))
    if pipes is not None:
        line = f"trainer failed: {type(exc).__name__}: {exc}".splitlines()[0][:MAX_MESSAGE_CHARS]
        pipes.log.error(f"{line}\ntraceback: {error_file}" if error_file else line)


def scalar_metrics(metrics: dict) -> dict:
    """The int / float entries of a metrics dict (what Dagster metadata and log lines take)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def format_step(step: int, metrics: dict) -> str:
    return f"step {step}: " + " ".join(f"{k}={v:.4g}" for k, v in scalar_metrics(metrics).items())
