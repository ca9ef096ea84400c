"""One progress display per long stage of `medlvr evaluate` (one per model's inference): a tqdm bar on stderr when
stderr is a terminal; in a pipe or a log file no bar redraws at all. Either way a line per benchmark as it
completes (`job_done`), and in a pipe one summary line when the stage ends."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm


class StageBar:
    def __init__(self, desc: str, total: int, stream: TextIO | None = None):
        self.desc, self.total, self.n = desc, total, 0
        self.stream = stream or sys.stderr
        self.t0 = time.perf_counter()
        interactive = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.bar = tqdm(total=total, desc=desc, file=self.stream, unit="sample", leave=True,
                        dynamic_ncols=True) if interactive else None

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.bar is not None:
            self.bar.update(n)

    def note(self, text: str) -> None:
        """What the stage is doing now (the current job), shown after the bar; nothing in a pipe."""
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)

    def job_done(self, text: str) -> None:
        """One finished piece of the stage (a benchmark of this model): a line as it completes, in a pipe as on a
        terminal (there above the bar, which stays at the bottom)."""
        line = f"{self.desc}: {text}"
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def close(self, summary: str = "") -> None:
        if self.bar is not None:
            self.bar.close()
        else:
            tail = f", {summary}" if summary else ""
            print(f"{self.desc}: {self.n}/{self.total} samples in {time.perf_counter() - self.t0:.1f}s{tail}",
                  file=self.stream, flush=True)

    def __enter__(self) -> StageBar:
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None or exc[0] is None:
            self.close()
