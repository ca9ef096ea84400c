"""The main job's console: one live line per stage on a terminal (a real pty), plain lines in a pipe; trainer
subprocesses write to their log file, never to the console, and a failing one is shown by its log's last lines."""

import io
import os
import sys
from pathlib import Path

import dagster as dg

from medlvr.pipelines.console import CLEAR_LINE, Console
from medlvr.pipelines.main_job import failure_text
from medlvr.pipelines.training.logs import log_tail, run_trainer


def _stage(console: Console) -> None:
    stage = console.stage("corpus", 3)
    stage.step("corpus_dataset_job[busi]", "ok", 1.25, "run 1234abcd")
    stage.step("corpus_dataset_job[hc18]", "reused")
    stage.step("corpus_dataset_job[lits]", "ok", 0.5)
    stage.close()


def _read_pty(master: int) -> str:
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the other side is closed and drained
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks).decode()


def test_on_a_terminal_a_stage_is_one_line_rewritten_in_place():
    master, slave = os.openpty()
    tty = os.fdopen(slave, "w")
    assert tty.isatty()
    console = Console(log=lambda line: print(line, file=tty, flush=True), stream=tty)
    _stage(console)
    tty.close()
    out = _read_pty(master).replace("\r\n", "\n")  # the pty's output processing turns \n into \r\n
    os.close(master)
    assert out.count(CLEAR_LINE) >= 4  # the status line, rewritten per step, then cleared for the summary
    assert f"{CLEAR_LINE}[corpus] 2/3 corpus_dataset_job[hc18]" in out
    lines = [ln for ln in out.split("\n") if ln]
    # what stays on screen: one line for the whole stage (the status redraws are on the same line)
    assert lines[-1].split(CLEAR_LINE)[-1] == lines[-1].split(CLEAR_LINE)[-1].strip() != ""
    assert lines[-1].split(CLEAR_LINE)[-1].startswith("[corpus] 3/3 done: 2 ran, 1 up to date (")
    assert len(lines) == 1


def test_in_a_pipe_plain_lines_and_no_carriage_returns():
    stream, lines = io.StringIO(), []
    console = Console(log=lines.append, stream=stream)
    _stage(console)
    assert stream.getvalue() == ""  # nothing written to the stream itself: no status line
    assert lines[0] == "  ok     corpus_dataset_job[busi] (1.2s, run 1234abcd)"
    assert lines[1] == "  reused corpus_dataset_job[hc18]" and len(lines) == 4
    assert lines[-1].startswith("[corpus] 3/3 done: 2 ran, 1 up to date (") and "\r" not in "".join(lines)


def test_failures_are_plain_lines_on_a_terminal_too():
    master, slave = os.openpty()
    tty = os.fdopen(slave, "w")
    printed = []
    console = Console(log=printed.append, stream=tty)
    stage = console.stage("training", 1)
    stage.step("training_job", "FAILED", 3.0)
    tty.close()
    os.close(master)
    assert printed == ["  FAILED training_job (3.0s)"]


CHILD = """
import sys
for i in range(30):
    print('{"step": %d, "loss": 1.0}' % i)
print("Loading weights:   0%|     | 0/57\\rLoading weights: 100%|#####| 57/57", file=sys.stderr)
if len(sys.argv) > 1:
    print("RuntimeError: the trainer broke at step 30", file=sys.stderr)
    sys.exit(3)
"""


def _trainer_asset(tmp_path: Path, fail: bool):
    log_path = tmp_path / "run" / "logs" / "trainer.log"

    @dg.asset
    def trainer(context: dg.AssetExecutionContext, pipes_subprocess_client: dg.PipesSubprocessClient):
        cmd = [sys.executable, "-c", CHILD] + (["fail"] if fail else [])
        run_trainer(pipes_subprocess_client, context, cmd, tmp_path, {}, log_path, "TEST")
        return dg.MaterializeResult()

    return trainer, log_path


def test_trainer_output_goes_to_its_log_file_not_the_console(tmp_path, capfd):
    asset, log_path = _trainer_asset(tmp_path, fail=False)
    instance = dg.DagsterInstance.ephemeral()
    res = dg.materialize([asset], resources={"pipes_subprocess_client": dg.PipesSubprocessClient()},
                         instance=instance, raise_on_error=False)
    assert res.success
    # the child's first lines are in no console output (its last ones are, in the run log's tail message, which
    # Dagster's console logger echoes at DEBUG in tests; the main job's console logger shows WARNING and up only)
    captured = capfd.readouterr()
    assert '{"step": 0, "loss": 1.0}' not in captured.out + captured.err
    text = log_path.read_text()
    assert '{"step": 0, "loss": 1.0}' in text and "Loading weights" in text
    # the Dagster run log gets the log's path and its tail, in one bounded message
    tails = [e.user_message for e in instance.all_logs(res.run_id) if "trainer finished" in e.user_message]
    assert len(tails) == 1 and str(log_path) in tails[0] and '{"step": 29, "loss": 1.0}' in tails[0]
    assert '{"step": 0, "loss": 1.0}' not in tails[0]  # the tail, not the whole log


def test_a_failing_trainer_shows_its_log_tail_and_path(tmp_path, capfd):
    asset, log_path = _trainer_asset(tmp_path, fail=True)
    res = dg.materialize([asset], resources={"pipes_subprocess_client": dg.PipesSubprocessClient()},
                         instance=dg.DagsterInstance.ephemeral(), raise_on_error=False)
    assert not res.success
    error = res.get_step_failure_events()[0].step_failure_data.error
    text = failure_text(error)
    assert text.splitlines()[0] == "    TEST trainer failed: RuntimeError: the trainer broke at step 30"
    assert f"    log: {log_path}" in text and '{"step": 29, "loss": 1.0}' in text
    assert len(text.splitlines()) <= 25 and "Traceback" not in text
    captured = capfd.readouterr()
    assert '{"step": 0, "loss": 1.0}' not in captured.out + captured.err
    assert log_tail(log_path, 2).splitlines() == ["Loading weights: 100%|#####| 57/57",
                                                  "RuntimeError: the trainer broke at step 30"]


def test_a_failed_stage_ends_medlvr_demo_with_one_line_and_exit_1(tmp_path, monkeypatch, capsys):
    import medlvr.pipelines.main_job as main_job
    from medlvr.pipelines.cli import main

    def failing_run_main(*args, **kwargs):
        raise RuntimeError("training failed")

    monkeypatch.setattr(main_job, "run_main", failing_run_main)
    assert main(["demo", "--dagster-home", str(tmp_path)]) == 1
    assert capsys.readouterr().err == "medlvr demo: training failed\n"
