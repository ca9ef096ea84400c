"""Trainer subprocesses write their stdout/stderr to a log file under their run folder, not to the console.

`run_trainer` launches the command through Dagster Pipes (metrics and the checkpoint still arrive as Pipes
messages) with the child's file descriptors 1 and 2 pointing at `<run out_dir>/logs/<asset>-<run id>.log`: the
JSON metric lines, library warnings and progress bars of the trainer land there. The tail of that log goes into the
Dagster run log (one event, bounded), and a failing trainer fails the asset with its last line, the log's path and
its last lines, which is what the main job prints.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
from dagster._core.errors import DagsterPipesExecutionError  # not exported at dagster's top level

TAIL_LINES = 20  # lines of the trainer's log shown in the run log and on failure


@contextmanager
def child_output_to(path: Path) -> Iterator[None]:
    """Point this process's fds 1 and 2 at `path` (appending) while the block runs, so that a child process
    started inside inherits them; restored afterwards, also on error. The parent writes nothing meanwhile: the
    step's own Dagster logging goes to the event log."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    try:
        with open(path, "ab") as f:
            os.dup2(f.fileno(), 1)
            os.dup2(f.fileno(), 2)
            try:
                yield
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
    finally:
        os.close(saved[0])
        os.close(saved[1])


def log_tail(path: Path, n: int = TAIL_LINES) -> str:
    """The last `n` lines of a log file ("" when there is none); carriage-return redraws keep their last state."""
    if not path.is_file():
        return ""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 64 * 1024))  # a tail needs the end of the file only
        text = f.read().decode("utf-8", errors="replace")
    lines = [ln.rsplit("\r", 1)[-1] for ln in text.split("\n")]  # not splitlines(): it splits at "\r" too
    return "\n".join([ln[:500] for ln in lines if ln.strip()][-n:])


def trainer_log_path(out_dir: Path, context: dg.AssetExecutionContext) -> Path:
    return Path(out_dir) / "logs" / f"{context.asset_key.to_user_string()}-{context.run.run_id[:8]}.log"


def run_trainer(client: dg.PipesSubprocessClient, context: dg.AssetExecutionContext, cmd: Sequence[str], cwd: Path,
                env: dict[str, str], log_path: Path, what: str, error_file: Path | None = None):
    """Run the trainer with its output in `log_path`; returns the Pipes invocation. On a non-zero exit: a Failure
    naming the last line of the traceback (`error_file`, else the log) and the log's path, with the tail attached."""
    context.log.info(f"launching: {' '.join(cmd)}\ntrainer output: {log_path}")
    try:
        with child_output_to(log_path):
            invocation = client.run(command=list(cmd), context=context, cwd=str(cwd), env=env)
    except DagsterPipesExecutionError as e:
        tail = log_tail(log_path)
        tb = error_file.read_text() if error_file is not None and error_file.is_file() else ""
        last = (tb.strip() or tail.strip() or str(e)).splitlines()[-1]
        raise dg.Failure(description=f"{what} trainer failed: {last}\nlog: {log_path}\n{tail}",
                         metadata={"log": dg.MetadataValue.path(str(log_path)),
                                   "traceback": dg.MetadataValue.md(f"```\n{(tb or tail)[-8000:]}\n```"),
                                   "command": " ".join(cmd)}) from e
    context.log.info(f"trainer finished; last lines of {log_path}:\n{log_tail(log_path)}")
    return invocation
