"""The real Python worker of Azure Functions, driven by a stand-in for the host.

* ``scripts/worker-venv.sh`` makes the Python 3.13 venv the worker runs in (the app's
  requirements with azure-functions 2.x, ``azure-functions-runtime``, gRPC stubs).
* :mod:`tests.worker_host.shell` is the worker process: the gRPC shell around the
  worker library, as the host image's proxy worker is.
* :mod:`tests.worker_host.host` is the host's side: it starts the worker, indexes and
  loads the app through it and turns HTTP requests, queue messages and timer ticks
  into invocations.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "worker-venv.sh"


class ClosingNote:
    """A pytest plugin, registered at run time by the tests that start hosts: at the end of
    the run, what each host exercised (FunctionsHost.summary) and how long it ran."""

    def __init__(self) -> None:
        self.notes: list[tuple[str, float, str]] = []

    def add(self, label: str, seconds: float, summary: str) -> None:
        self.notes.append((label, seconds, summary))

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        terminalreporter.section("Functions worker harness (tests/worker_host)")
        for label, seconds, summary in self.notes:
            terminalreporter.write_line(f"{label}: {seconds:.1f} s")
            for line in summary.splitlines():
                terminalreporter.write_line(f"    {line}")


def closing_note(config: Any) -> ClosingNote:
    """The run's note (registered on first use)."""
    note = config.pluginmanager.get_plugin("worker-harness-note")
    if note is None:
        note = ClosingNote()
        config.pluginmanager.register(note, "worker-harness-note")
    return note  # type: ignore[no-any-return]


def ensure_worker_venv() -> None:
    """Create or refresh the worker venv (a no-op when it is current); a failure to make
    it is an error of the suite, never a skip."""
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=1200,
                          env=os.environ.copy(), check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"scripts/worker-venv.sh failed ({proc.returncode}):\n"
                           f"{proc.stderr[-4000:]}")
