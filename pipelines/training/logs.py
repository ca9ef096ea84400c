"""Trainer subprocesses write their stdout/stderr to a log file under their run folder, not to the console.

`run_trainer` launches the command through Dagster Pipes (metrics and the checkpoint still arrive as Pipes
messages) with the child's file descriptors 1 and 2 pointing at `<run out_dir>/logs/<asset>-<run id>.log`: the
JSON metric lines, library warnings and progress bars of the trainer land there. The tail of that log goes into the
Dagster run log (one event, bounded), and a failing trainer fails the asset with its last line, the log's path and
its last lines, which is what the main job prints.

A trainer that exits 0 materialises its asset only from the materialisation it reported over Pipes, and only when
the checkpoint that report names is on disk: Dagster's implicit materialisation (made when the process reported
nothing, e.g. after the Pipes message stream broke) is switched off, so such a run fails in one line instead of
recording an asset without a checkpoint. That failure is the orchestration's, not the trainer's: it carries
`FAILURE_KIND: ORCHESTRATION` in its metadata, which is what the main job retries (pipelines/main_job.py).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import dagster as dg

from medlvr.pipelines.training.checks import checkpoint_model_dir
from medlvr.pipelines.training.pipes_reader import CompleteLinesMessageReader

TAIL_LINES = 20  # lines of the trainer's log shown in the run log and on failure
FAILURE_KIND = "medlvr/failure_kind"  # Failure metadata: who failed, the trainer or the orchestration
ORCHESTRATION = "orchestration"
# What PipesSubprocessClient.run raises when the process exits non-zero; dagster does not export the class, so it is
# recognised by name (the only other way would be a private import, which ties the project to one dagster version)
TRAINER_EXIT_ERROR = "DagsterPipesExecutionError"


def trainer_pipes_client() -> dg.PipesSubprocessClient:
    """The Pipes client of the training assets: Dagster's subprocess client with a reader that hands over complete
    message lines only (pipelines/training/pipes_reader.py)."""
    return dg.PipesSubprocessClient(message_reader=CompleteLinesMessageReader())


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
    except Exception as e:
        if type(e).__name__ != TRAINER_EXIT_ERROR:  # not the trainer's non-zero exit: the orchestration's error
            raise
        tail = log_tail(log_path)
        tb = error_file.read_text() if error_file is not None and error_file.is_file() else ""
        last = (tb.strip() or tail.strip() or str(e)).splitlines()[-1]
        raise dg.Failure(description=f"{what} trainer failed: {last}\nlog: {log_path}\n{tail}",
                         metadata={"log": dg.MetadataValue.path(str(log_path)),
                                   "traceback": dg.MetadataValue.md(f"```\n{(tb or tail)[-8000:]}\n```"),
                                   "command": " ".join(cmd)}) from e
    context.log.info(f"trainer finished; last lines of {log_path}:\n{log_tail(log_path)}")
    return invocation


def reported_materialization(invocation, what: str, log_path: Path) -> dg.MaterializeResult:
    """The materialisation the trainer reported over Pipes, when the checkpoint it names exists. Otherwise a
    Failure in one line: of the orchestration when nothing was reported (the trainer exited 0, so its Pipes session
    is what broke), of the trainer when its report names no checkpoint on disk."""
    results = invocation.get_results(implicit_materializations=False)
    if not results:
        raise dg.Failure(description=f"{what} trainer exited 0 but no materialisation arrived over Dagster Pipes "
                                     f"(its message stream broke, or RANK 0 was not launched); log: {log_path}",
                         metadata={FAILURE_KIND: ORCHESTRATION, "log": dg.MetadataValue.path(str(log_path))})
    checkpoint = checkpoint_model_dir(dict(results[0].metadata or {}))
    if checkpoint is None or not checkpoint.is_dir():
        raise dg.Failure(description=f"{what} trainer reported checkpoint {checkpoint}, which is not a folder on "
                                     f"disk; log: {log_path}", metadata={"log": dg.MetadataValue.path(str(log_path))})
    return results[0]
