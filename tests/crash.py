"""Crash injection: run the real ``infrabackup`` command (or any program) as its own process
and SIGKILL it at a chosen moment, to prove that every change made in steps survives a kill.

Two ways to choose the moment, both used by the crash tests:

* **by what the process wrote** — :func:`run_and_kill` polls a predicate (a file appeared,
  a folder holds N entries, a journal exists) every fraction of a millisecond and kills
  the process the first time it holds: the kill lands inside a named phase;
* **by time** — :func:`kill_delays` spreads ``n`` kill moments over a run whose length
  :func:`timed_run` measured once, so a bounded loop covers every phase in between.

The process runs in a session of its own and the whole group is killed, so helper threads
and children die with it exactly as they would when a machine or a Functions instance dies.
Nothing here reaches into the program under test: it sees a real SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

REPO = Path(__file__).resolve().parent.parent
#: How the command is started: the installed package's ``python -m`` entry point.
CLI = [sys.executable, "-m", "infrabackup"]


def cli(*args: str) -> list[str]:
    """The argv of ``infrabackup ARGS`` run as its own process."""
    return [*CLI, *args]


@dataclass(frozen=True)
class Outcome:
    """How a run ended: ``killed`` by us, or finished by itself with ``returncode``."""

    killed: bool
    returncode: int
    elapsed: float
    stdout: str
    stderr: str


class _Run:
    """A started process whose output goes to unlinked temporary files, not pipes: a
    chatty child must never block on a full pipe while we poll it."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str] | None,
                 cwd: Path | None) -> None:
        self.out = tempfile.TemporaryFile()  # noqa: SIM115 - closed by finish()
        self.err = tempfile.TemporaryFile()  # noqa: SIM115 - closed by finish()
        self.proc = subprocess.Popen(
            list(argv), cwd=cwd or REPO, env=dict(os.environ if env is None else env),
            stdin=subprocess.DEVNULL, stdout=self.out, stderr=self.err,
            start_new_session=True,
        )

    def finish(self, killed: bool, started: float, timeout: float) -> Outcome:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill(self.proc)
            self.proc.wait()
            raise AssertionError(f"{self.proc.args!r} did not end within {timeout} s:\n"
                                 f"{self._read(self.err)}") from None
        return Outcome(killed, self.proc.returncode, time.monotonic() - started,
                       self._read(self.out), self._read(self.err))

    @staticmethod
    def _read(file: IO[bytes]) -> str:
        file.seek(0)
        text = file.read().decode("utf-8", "replace")
        file.close()
        return text


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def timed_run(argv: Sequence[str], env: Mapping[str, str] | None = None, *,
              cwd: Path | None = None, timeout: float = 300.0) -> Outcome:
    """Run to the end (no kill); the outcome says how long it took."""
    started = time.monotonic()
    return _Run(argv, env, cwd).finish(False, started, timeout)


def run_and_kill(
    argv: Sequence[str],
    env: Mapping[str, str] | None = None,
    *,
    when: Callable[[], bool] | None = None,
    after: float | None = None,
    cwd: Path | None = None,
    poll: float = 0.0002,
    timeout: float = 300.0,
) -> Outcome:
    """Start ``argv``; SIGKILL its process group the first time ``when()`` is true, or
    ``after`` seconds after the start (whichever comes first; give at least one).

    Returns the outcome; ``killed`` is False when the process ended before the moment
    came (the caller decides whether that run still counts).
    """
    if when is None and after is None:
        raise ValueError("give when=, after= or both")
    started = time.monotonic()
    run = _Run(argv, env, cwd)
    proc = run.proc
    deadline = started + after if after is not None else None
    killed = False
    while proc.poll() is None:
        if (deadline is not None and time.monotonic() >= deadline) or (
                when is not None and _holds(when)):
            _kill(proc)
            killed = True
            break
        time.sleep(poll)
    return run.finish(killed, started, timeout)


def run_until_killed(
    argv: Sequence[str],
    env: Mapping[str, str] | None,
    *,
    reset: Callable[[], None],
    finished: Callable[[Outcome], None],
    when: Callable[[], bool] | None = None,
    after: float | None = None,
    attempts: int = 3,
    poll: float = 0.0002,
) -> Outcome:
    """:func:`run_and_kill`, tried again when the run ended before its moment came.

    A moment whose window is a few milliseconds wide, or a kill by time on a run faster
    than the one :func:`timed_run` measured, is otherwise missed on a fast machine and the
    case tests nothing. Before each try ``reset()`` puts the starting state back; each run
    that ended by itself is handed to ``finished(outcome)``, which asserts it came out
    right (a missed kill is still a run to check). A moment by time (no ``when``) comes
    30 % sooner on each try. Returns the killed outcome, or the last one when no try was
    killed.
    """
    outcome: Outcome | None = None
    for _ in range(max(1, attempts)):
        reset()
        outcome = run_and_kill(argv, env, when=when, after=after, poll=poll)
        if outcome.killed:
            return outcome
        finished(outcome)
        if when is None and after is not None:
            after *= 0.7
    assert outcome is not None
    return outcome


def _holds(predicate: Callable[[], bool]) -> bool:
    """The predicate, with the races of reading a tree that is being changed absorbed."""
    try:
        return bool(predicate())
    except OSError:
        return False


def kill_delays(total: float, n: int, *, start: float = 0.0) -> list[float]:
    """``n`` kill moments spread evenly over ``(start, total)``, for a run that took
    ``total`` seconds: every phase of it gets some."""
    if n < 1:
        return []
    span = max(total - start, 0.001)
    return [start + span * (i + 0.5) / n for i in range(n)]


def count_entries(folder: Path, pattern: str = "*") -> int:
    """How many entries match ``pattern`` anywhere below ``folder`` (0 if it is gone)."""
    if not folder.exists():
        return 0
    return sum(1 for _ in folder.rglob(pattern))


if __name__ == "__main__":  # pragma: no cover - a manual aid: python -m tests.crash ARGS
    print(run_and_kill(cli(*sys.argv[1:]), after=0.5))
