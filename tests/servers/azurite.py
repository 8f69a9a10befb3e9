"""Azurite, the Azure Storage emulator, for the tests: queues and tables for real.

Fixture (import it into a test module: ``from tests.servers.azurite import azurite``):

* ``azurite`` (session): the connection string of one Azurite on 127.0.0.1 (free blob,
  queue and table ports, its own data folder) — what ``AzureWebJobsStorage`` holds in a
  test. Tests isolate themselves by stamp (the job table's partition) or by their own
  queue, table and container names, not by restarting it.
* ``azurite_server`` (session): the :class:`Azurite` behind it (ports, log tail).

Azurite is installed from the npm registry by ``npm ci`` (package.json, package-lock.json;
``scripts/install-system-deps.sh`` runs it). When ``node_modules/azurite`` is missing the
fixture fails, never skips, and says how to install it.

Process hygiene: Azurite runs in a new session (its own process group), its standard
input is a pipe this process holds, and the fixture stops it by its process group id,
never by name.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
AZURITE_JS = ROOT / "node_modules" / "azurite" / "dist" / "src" / "azurite.js"
INSTALL_HINT = "npm ci --no-audit --no-fund   (in the repository root; needs node and npm)"
START_TIMEOUT = 30.0

#: Azurite's documented development account; a public constant, not a secret.
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


@dataclass
class Azurite:
    """One Azurite process and its ports."""

    location: Path
    blob_port: int = 0
    queue_port: int = 0
    table_port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.location / "azurite.log"

    @property
    def connection_string(self) -> str:
        """An ``AzureWebJobsStorage`` connection string for this emulator."""
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{self.blob_port}/{ACCOUNT};"
            f"QueueEndpoint=http://127.0.0.1:{self.queue_port}/{ACCOUNT};"
            f"TableEndpoint=http://127.0.0.1:{self.table_port}/{ACCOUNT};"
        )

    def start(self) -> None:
        node = shutil.which("node")
        if node is None or not AZURITE_JS.is_file():
            pytest.fail(
                "Azurite is not installed (node_modules/azurite missing or no node): the "
                f"Functions tests need the real storage emulator. Install it with: {INSTALL_HINT}",
                pytrace=False,
            )
        self.blob_port, self.queue_port, self.table_port = _free_ports(3)
        out = open(self.log, "ab")  # noqa: SIM115 - owned by the process
        try:
            self.proc = subprocess.Popen(
                [
                    node, str(AZURITE_JS), "--silent", "--disableTelemetry",
                    "--skipApiVersionCheck", "--location", str(self.location / "data"),
                    "--blobHost", "127.0.0.1", "--blobPort", str(self.blob_port),
                    "--queueHost", "127.0.0.1", "--queuePort", str(self.queue_port),
                    "--tableHost", "127.0.0.1", "--tablePort", str(self.table_port),
                ],
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            out.close()
        deadline = time.monotonic() + START_TIMEOUT
        pending = [self.blob_port, self.queue_port, self.table_port]
        while pending and time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Azurite exited with {self.proc.returncode}:\n{self.tail()}")
            with contextlib.suppress(OSError), socket.create_connection(
                ("127.0.0.1", pending[0]), timeout=0.5
            ):
                pending.pop(0)
                continue
            time.sleep(0.05)
        if pending:
            self.stop()
            raise RuntimeError(f"Azurite did not listen on port {pending[0]}:\n{self.tail()}")

    def stop(self) -> None:
        """Stop Azurite (its process group); idempotent."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()

    def tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""


def _free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports on 127.0.0.1 that nothing listens on right now."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for sock in socks:
            sock.close()


@pytest.fixture(scope="session")
def azurite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """The session's Azurite process (see the module docstring)."""
    location = Path(tempfile.mkdtemp(prefix="azurite-", dir=tmp_path_factory.mktemp("azurite")))
    server = Azurite(location)
    atexit.register(server.stop)  # in case the fixture's finaliser never runs
    try:
        server.start()
        yield server
    finally:
        server.stop()
        atexit.unregister(server.stop)
        shutil.rmtree(location, ignore_errors=True)


@pytest.fixture(scope="session")
def azurite(azurite_server: Azurite) -> str:
    """The connection string of the session's Azurite (an ``AzureWebJobsStorage`` value)."""
    return azurite_server.connection_string
