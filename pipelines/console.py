"""The main job's console: one progress display per long stage (corpus, publish, training, evaluation).

On a terminal a stage is ONE line rewritten in place ("[corpus] 12/31 busi") and replaced by its summary line when
the stage ends; in a pipe or a file (CI logs) there is no carriage-return animation: one plain line per finished
step, then the summary. Failures are always printed as plain lines. Children's output never reaches the console:
trainers write to log files under their run folder (pipelines/training/logs.py) and the in-process steps run with
progress bars off (`HF_HUB_DISABLE_PROGRESS_BARS`, set by the main job).
"""

from __future__ import annotations

import shutil
import sys
import time
from typing import Callable, TextIO

CLEAR_LINE = "\r\x1b[2K"  # back to column 0, erase the line


class StageProgress:
    def __init__(self, console: "Console", name: str, total: int):
        self.console, self.name, self.total = console, name, total
        self.done, self.ran, self.reused, self.failed = 0, 0, 0, 0
        self.t0 = time.perf_counter()
        self.console.status(f"[{name}] 0/{total}")

    def step(self, label: str, outcome: str, seconds: float | None = None, detail: str = "") -> None:
        """One step finished: outcome is "ok" (ran), "reused" (up to date) or "FAILED"."""
        self.done += 1
        self.ran += outcome == "ok"
        self.reused += outcome == "reused"
        self.failed += outcome == "FAILED"
        took = f" ({seconds:.1f}s{', ' + detail if detail else ''})" if seconds is not None else ""
        line = f"  {outcome:<6} {label}{took}"
        if outcome == "FAILED" or not self.console.live:
            self.console.line(line)
        if self.console.live:
            self.console.status(f"[{self.name}] {self.done}/{self.total} {label}")

    def close(self, note: str = "") -> None:
        parts = [f"{self.ran} ran", f"{self.reused} up to date"] + ([f"{self.failed} FAILED"] if self.failed else [])
        self.console.line(f"[{self.name}] {self.done}/{self.total} done: {', '.join(parts)} "
                          f"({time.perf_counter() - self.t0:.1f}s){note}")


class Console:
    """Writes through `log` (plain lines) and, when `stream` is a terminal, a status line rewritten in place."""

    def __init__(self, log: Callable[[str], None] = print, stream: TextIO | None = None):
        self.log = log
        self.stream = stream if stream is not None else sys.stdout
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self._status_shown = False

    def status(self, text: str) -> None:
        if not self.live:
            return
        width = max(20, shutil.get_terminal_size((100, 20)).columns - 1)
        self.stream.write(CLEAR_LINE + text[:width])
        self.stream.flush()
        self._status_shown = True

    def line(self, text: str) -> None:
        if self._status_shown:  # the plain line replaces the status line
            self.stream.write(CLEAR_LINE)
            self.stream.flush()
            self._status_shown = False
        self.log(text)

    def stage(self, name: str, total: int) -> StageProgress:
        return StageProgress(self, name, total)
