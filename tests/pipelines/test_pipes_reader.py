"""Dagster Pipes messages written in pieces (a line cut mid-way, the rest after a pause), as a busy trainer's
appends can be seen by a reader: the complete-lines reader hands every message over; Dagster's stock reader
decodes the half line, its reader thread dies, and the materialisation (the checkpoint path) is lost."""

import sys
import textwrap

import dagster as dg
import pytest

from medlvr.pipelines.training.logs import FAILURE_KIND, ORCHESTRATION, reported_materialization, trainer_pipes_client
from medlvr.pipelines.training.pipes_reader import CompleteLinesMessageReader, complete_lines

PAUSE_S = 0.4  # long enough for a reader polling every 10-50 ms to see the half line

# A trainer whose every Pipes message reaches the file in two writes with a pause between them (the last one
# without its newline), through the public dagster_pipes writer API.
TORN_TRAINER = textwrap.dedent("""
    import json, sys, time
    from contextlib import contextmanager
    from dagster_pipes import PipesMessageWriter, PipesMessageWriterChannel, open_dagster_pipes

    PAUSE, CHECKPOINT, REPORT = float(sys.argv[1]), sys.argv[2], sys.argv[3] == "report"

    class TornChannel(PipesMessageWriterChannel):
        def __init__(self, path):
            self.path = path

        def write_message(self, message):
            line = json.dumps(message) + ("" if message["method"] == "closed" else "\\n")
            cut = len(line) // 2
            with open(self.path, "a") as f:
                f.write(line[:cut])
                f.flush()
                time.sleep(PAUSE)
                f.write(line[cut:])

    class TornWriter(PipesMessageWriter):
        @contextmanager
        def open(self, params):
            yield TornChannel(params["path"])

    with open_dagster_pipes(message_writer=TornWriter()) as pipes:
        for step in range(3):
            pipes.log.info(f"step {step}: loss {1.0 / (step + 1):.3f}")
        if REPORT:
            pipes.report_asset_materialization(metadata={"checkpoint": CHECKPOINT, "steps": 3})
""")


def _materialize(tmp_path, client: dg.PipesSubprocessClient, report: bool = True, checked: bool = False):
    script = tmp_path / "torn_trainer.py"
    script.write_text(TORN_TRAINER)
    checkpoint = tmp_path / "step-0000003"
    checkpoint.mkdir(exist_ok=True)
    cmd = [sys.executable, str(script), str(PAUSE_S), str(checkpoint), "report" if report else "silent"]

    @dg.asset(name="trainer")
    def trainer(context: dg.AssetExecutionContext, pipes_subprocess_client: dg.PipesSubprocessClient):
        invocation = pipes_subprocess_client.run(command=cmd, context=context)
        if checked:
            return reported_materialization(invocation, "TEST", tmp_path / "trainer.log")
        return invocation.get_results()  # Dagster's default, as the training assets had it

    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([trainer], instance=instance, raise_on_error=False,
                            resources={"pipes_subprocess_client": client})
    return result, instance, checkpoint


def _logged(instance, run_id) -> list[str]:
    return [ev.user_message for ev in instance.all_logs(run_id) if ev.user_message.startswith("step ")]


def test_complete_lines_reader_hands_over_every_torn_message(tmp_path):
    result, instance, checkpoint = _materialize(tmp_path, trainer_pipes_client())
    assert result.success
    metadata = result.asset_materializations_for_node("trainer")[0].metadata
    assert metadata["checkpoint"].value == str(checkpoint) and metadata["steps"].value == 3
    assert _logged(instance, result.run_id) == ["step 0: loss 1.000", "step 1: loss 0.500", "step 2: loss 0.333"]
    # the last message ("closed", written without its newline) arrived too: nothing lost at the end of the session
    assert not any("did not receive closed message" in ev.user_message for ev in instance.all_logs(result.run_id))


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # its reader thread's death
def test_stock_reader_loses_torn_messages(tmp_path):
    """The failure the reader fixes, reproduced: with Dagster's PipesTempFileMessageReader the run is recorded as
    materialised without the checkpoint the trainer reported (the test above fails on this reader)."""
    stock = dg.PipesSubprocessClient(message_reader=dg.PipesTempFileMessageReader())
    result, instance, _ = _materialize(tmp_path, stock)
    metadata = result.asset_materializations_for_node("trainer")[0].metadata
    assert "checkpoint" not in metadata
    assert len(_logged(instance, result.run_id)) < 3


def test_a_session_without_the_report_fails_as_the_orchestrations(tmp_path):
    """The training assets' guard: a trainer that exited 0 but whose report never arrived (a broken message stream)
    fails the asset in one line marked as the orchestration's failure (the main job retries those), instead of
    Dagster's implicit materialisation without a checkpoint."""
    result, instance, _ = _materialize(tmp_path, trainer_pipes_client(), report=False, checked=True)
    assert not result.success and not result.asset_materializations_for_node("trainer")
    failure = next(ev.dagster_event.step_failure_data for ev in instance.all_logs(result.run_id)
                   if ev.dagster_event and ev.dagster_event.event_type == dg.DagsterEventType.STEP_FAILURE)
    assert "TEST trainer exited 0 but no materialisation arrived over Dagster Pipes" in failure.error.message
    assert failure.user_failure_data.metadata[FAILURE_KIND].value == ORCHESTRATION


def test_a_checked_session_that_reported_its_checkpoint_materialises(tmp_path):
    result, _, checkpoint = _materialize(tmp_path, trainer_pipes_client(), checked=True)
    assert result.success
    assert result.asset_materializations_for_node("trainer")[0].metadata["checkpoint"].value == str(checkpoint)


@pytest.mark.parametrize("chunks", [[b'{"a": 1}\n{"b"', b': 2}\n'], [b'{"a"', b": 1}", b"\n", b'{"b": 2}\n']])
def test_complete_lines_keeps_the_partial_line_for_its_newline(chunks):
    lines, rest = [], b""
    for chunk in chunks:
        done, rest = complete_lines(rest, chunk)
        lines += done
    assert lines == [b'{"a": 1}', b'{"b": 2}'] and rest == b""


def test_reader_params_are_dagster_pipes_file_params():
    """The trainer side is dagster_pipes' default writer: it appends to the file named by "path"."""
    from dagster_pipes import PipesDefaultMessageWriter

    assert PipesDefaultMessageWriter.FILE_PATH_KEY == "path"
    assert CompleteLinesMessageReader().no_messages_debug_text()
