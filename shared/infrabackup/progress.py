"""Progress of long work: what receives it, and a bar on a terminal (stderr), quiet
everywhere else."""

from __future__ import annotations

import sys
import time
from typing import Protocol, TextIO

MIB = 1024 * 1024


class Progress(Protocol):
    """Receives progress; the CLI draws a bar, the Functions log milestones."""

    def start(self, total_bytes: int | None) -> None: ...

    def component(self, name: str) -> None: ...

    def advance(self, nbytes: int) -> None: ...

    def finish(self) -> None: ...


class NullProgress:
    def start(self, total_bytes: int | None) -> None:
        pass

    def component(self, name: str) -> None:
        pass

    def advance(self, nbytes: int) -> None:
        pass

    def finish(self) -> None:
        pass


class TerminalProgress:
    """Draws ``component  42% 120.0/285.3 MiB  180.2 MiB/s`` on one line of ``stream``."""

    def __init__(self, stream: TextIO, verb: str = "backing up") -> None:
        self.stream = stream
        self.verb = verb
        self.total: int | None = None
        self.done = 0
        self.name = ""
        self.started = time.monotonic()
        self._last_draw = 0.0

    def start(self, total_bytes: int | None) -> None:
        self.total = total_bytes
        self.started = time.monotonic()

    def component(self, name: str) -> None:
        self.name = name
        self._draw(force=True)

    def advance(self, nbytes: int) -> None:
        self.done += nbytes
        self._draw()

    def finish(self) -> None:
        self._draw(force=True)
        self.stream.write("\n")
        self.stream.flush()

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_draw < 0.1:
            return
        self._last_draw = now
        rate = self.done / max(now - self.started, 1e-6) / MIB
        if self.total:
            pct = min(100, int(self.done * 100 / self.total))
            width = 24
            filled = width * pct // 100
            bar = "#" * filled + "-" * (width - filled)
            text = (f"{self.verb} {self.name:<16.16} [{bar}] {pct:3d}% "
                    f"{self.done / MIB:8.1f}/{self.total / MIB:.1f} MiB {rate:7.1f} MiB/s")
        else:
            text = f"{self.verb} {self.name:<16.16} {self.done / MIB:8.1f} MiB {rate:7.1f} MiB/s"
        self.stream.write("\r" + text)
        self.stream.flush()


def progress_for(json_output: bool, verb: str = "backing up") -> TerminalProgress | None:
    """A bar on stderr when it is a terminal and the output is for people; else None."""
    if json_output or not sys.stderr.isatty():
        return None
    return TerminalProgress(sys.stderr, verb)
