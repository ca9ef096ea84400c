"""A failing trainer's Pipes report is one short line naming the traceback file; the traceback is in the file."""

import traceback

from medlvr.training.pipes import ERROR_FILE, MAX_MESSAGE_CHARS, report_failure


class _Log:
    def __init__(self):
        self.errors = []

    def error(self, message):
        self.errors.append(message)


class _Pipes:
    def __init__(self):
        self.log = _Log()


def test_failure_report_is_a_line_and_a_path(tmp_path):
    pipes = _Pipes()
    try:
        raise ValueError("bad batch\n" + "x" * 20_000)
    except ValueError as exc:
        report_failure(pipes, exc, tmp_path)
        expected = "".join(traceback.format_exception(exc))
    (message,) = pipes.log.errors
    first, second = message.split("\n")
    assert first == "trainer failed: ValueError: bad batch" and second == f"traceback: {tmp_path / ERROR_FILE}"
    assert len(message) < MAX_MESSAGE_CHARS + 200
    assert (tmp_path / ERROR_FILE).read_text() == expected
