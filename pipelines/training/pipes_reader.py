"""A Dagster Pipes message reader that hands the handler complete lines only.

Dagster's own file readers (`PipesTempFileMessageReader`, `PipesFileMessageReader`) tail the message file with
`readline()`, which returns whatever is in the file when it reads, including a line the trainer has not finished
writing; `json.loads` of that half line raises in the reader thread, which dies, and every later message (the
final materialisation with the checkpoint path) is lost. Here a partial line waits in a buffer for its newline;
when the session closes (the subprocess has exited, so nothing more will come) the file is read to its end, and a
last line without a newline is handed over too. A complete line that is not a Pipes message is reported to Dagster
as a framework exception and skipped: the lines after it are still read.

The protocol is Dagster's: the trainer side (`dagster_pipes.open_dagster_pipes`, default message writer) sees the
same `{"path": ...}` params as with the stock reader and appends one JSON message per line to that file.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg

MESSAGES_FILE = "messages.jsonl"
POLL_SECONDS = 0.05  # how often the reader looks for new bytes while the trainer runs
CHUNK_BYTES = 1 << 16


def complete_lines(buffer: bytes, chunk: bytes) -> tuple[list[bytes], bytes]:
    """(the complete lines in buffer + chunk, the rest after the last newline: a line still being written)."""
    *lines, rest = (buffer + chunk).split(b"\n")
    return lines, rest


class CompleteLinesMessageReader(dg.PipesMessageReader):
    """Reads Pipes messages from a temporary file; only complete lines reach the handler (see the module doc)."""

    def __init__(self, poll_seconds: float = POLL_SECONDS):
        self.poll_seconds = poll_seconds

    @contextmanager
    def read_messages(self, handler: dg.PipesMessageHandler) -> Iterator[dict]:
        session_closed = threading.Event()
        with tempfile.TemporaryDirectory(prefix="medlvr-pipes-") as tmp:
            path = os.path.join(tmp, MESSAGES_FILE)
            open(path, "wb").close()
            thread = threading.Thread(target=self._read, args=(path, handler, session_closed), daemon=True)
            thread.start()
            try:
                yield {"path": path}  # dagster_pipes' default writer appends to a file given as "path"
            finally:
                session_closed.set()
                thread.join()

    def _read(self, path: str, handler: dg.PipesMessageHandler, session_closed: threading.Event) -> None:
        rest = b""
        with open(path, "rb") as f:
            while True:
                closed = session_closed.is_set()  # before reading: once closed, this read reaches the file's end
                chunk = f.read(CHUNK_BYTES)
                if chunk:
                    lines, rest = complete_lines(rest, chunk)
                    for line in lines:
                        self._hand_over(line, handler)
                elif closed:
                    break
                else:
                    session_closed.wait(self.poll_seconds)
        if rest.strip():  # the writer has exited: its last line lacked only the newline
            self._hand_over(rest, handler)

    def _hand_over(self, line: bytes, handler: dg.PipesMessageHandler) -> None:
        if not line.strip():
            return
        try:
            message = json.loads(line)
        except ValueError:
            handler.report_pipes_framework_exception(f"{type(self).__name__}: a line that is not a Pipes message "
                                                     f"({len(line)} bytes)", sys.exc_info())
            return
        handler.handle_message(message)

    def no_messages_debug_text(self) -> str:
        return "Attempted to read messages from a temporary file (complete lines only)."
