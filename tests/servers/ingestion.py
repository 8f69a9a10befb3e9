"""A local Application Insights ingestion endpoint for the real Azure Monitor exporter.

The exporter posts JSON arrays of envelopes (gzip-compressed when it says so in
Content-Encoding) to ``POST /v2.1/track`` of the connection string's IngestionEndpoint;
this server (stdlib ``http.server`` in a thread, on 127.0.0.1 and a free port) keeps every
request's decompressed body and every envelope, and answers as the service does:
200 ``{"itemsReceived": n, "itemsAccepted": n, "errors": []}``.

Fixtures (import them into a test module):

* ``ingestion`` (session): the running server.
* ``azure_monitor`` (session): ``configure_telemetry`` called once for the whole test
  session with a connection string pointing at ``ingestion`` (offline storage, live
  metrics, SDK stats and the control plane off; no resource detector that probes the
  network), yielding the :class:`~infrabackup.telemetry.AzureMonitorTelemetry`.
  configure_azure_monitor is process-global, so every test module that needs the real
  exporter uses this one fixture.

Envelopes are plain dicts as sent; helpers find custom events, metric points and spans
(requests and dependencies) by name.
"""

from __future__ import annotations

import gzip
import json
import os
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from infrabackup.settings import load_settings
from infrabackup.telemetry import AzureMonitorTelemetry, Telemetry, configure_telemetry

TRACK_PATH = "/v2.1/track"
INSTRUMENTATION_KEY = "00000000-0000-0000-0000-000000000000"

Envelope = dict[str, Any]

# The exporter's own environment switches for a test run: nothing leaves this machine.
TEST_ENVIRONMENT = {
    "APPLICATIONINSIGHTS_SDKSTATS_DISABLED": "true",  # no SDK statistics to Microsoft
    "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true",
    "APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED": "true",  # no OneSettings polling
    "OTEL_TRACES_SAMPLER": "always_on",
    # The default detectors include azure_vm, which probes 169.254.169.254.
    "OTEL_EXPERIMENTAL_RESOURCE_DETECTORS": "azure_app_service",
}


@dataclass
class Request:
    """One request as received: path, headers, and the body after Content-Encoding."""

    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class IngestionServer:
    """What the exporter posted. Thread-safe; ``mark()`` / ``since=`` select one test's share."""

    host: str = "127.0.0.1"
    port: int = 0
    requests: list[Request] = field(default_factory=list)
    envelopes: list[Envelope] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}/"

    @property
    def connection_string(self) -> str:
        return f"InstrumentationKey={INSTRUMENTATION_KEY};IngestionEndpoint={self.endpoint}"

    # -- lifecycle --

    def start(self) -> IngestionServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                encoding = (self.headers.get("Content-Encoding") or "").lower()
                try:
                    body = _decode(raw, encoding)
                    items = json.loads(body) if self.path == TRACK_PATH else []
                except (OSError, ValueError, zlib.error) as exc:
                    self._answer(400, {"error": f"unreadable body: {exc}"})
                    return
                if isinstance(items, dict):
                    items = [items]
                owner._record(Request(self.path, dict(self.headers.items()), body), items)
                if self.path != TRACK_PATH:
                    self._answer(404, {"error": f"no such path {self.path}"})
                    return
                self._answer(200, {"itemsReceived": len(items), "itemsAccepted": len(items),
                                   "errors": []})

            def _answer(self, status: int, data: dict[str, Any]) -> None:
                payload = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep the test output quiet

        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="ingestion", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket; safe to call twice."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _record(self, request: Request, items: list[Envelope]) -> None:
        with self._lock:
            self.requests.append(request)
            self.envelopes.extend(items)

    # -- queries --

    def mark(self) -> int:
        """A position: pass it as ``since`` to see only what arrived afterwards."""
        with self._lock:
            return len(self.envelopes)

    def received(self, since: int = 0) -> list[Envelope]:
        with self._lock:
            return list(self.envelopes[since:])

    def raw_bodies(self) -> list[bytes]:
        """Every request body as received (decompressed), for searching for secrets."""
        with self._lock:
            return [r.body for r in self.requests]

    def events(self, name: str, since: int = 0) -> list[Envelope]:
        """Custom events (EventData) called ``name``."""
        return [e for e in self.received(since)
                if base_type(e) == "EventData" and base_data(e).get("name") == name]

    def event_properties(self, name: str, since: int = 0, **match: str) -> list[dict[str, str]]:
        """The customDimensions of events ``name`` whose properties include ``match``."""
        found = []
        for envelope in self.events(name, since):
            properties = base_data(envelope).get("properties", {})
            if all(properties.get(k) == v for k, v in match.items()):
                found.append(properties)
        return found

    def metric_points(self, name: str, since: int = 0) -> list[dict[str, Any]]:
        """Metric data points called ``name``, each with its envelope's ``properties``."""
        points = []
        for envelope in self.received(since):
            if base_type(envelope) != "MetricData":
                continue
            data = base_data(envelope)
            for point in data.get("metrics", []):
                if point.get("name") == name:
                    points.append({**point, "properties": data.get("properties", {})})
        return points

    def spans(self, since: int = 0, **match: str) -> list[Envelope]:
        """Requests and dependencies (what spans become) whose properties include ``match``."""
        found = []
        for envelope in self.received(since):
            if base_type(envelope) not in ("RequestData", "RemoteDependencyData"):
                continue
            properties = base_data(envelope).get("properties", {})
            if all(properties.get(k) == v for k, v in match.items()):
                found.append(envelope)
        return found

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        """Poll ``predicate`` until it holds or ``timeout`` passes; return its last value."""
        deadline = time.monotonic() + timeout
        while True:
            if predicate():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)


def base_type(envelope: Envelope) -> str | None:
    data = envelope.get("data") or {}
    return data.get("baseType")


def base_data(envelope: Envelope) -> dict[str, Any]:
    data = envelope.get("data") or {}
    return data.get("baseData") or {}


def _decode(raw: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return gzip.decompress(raw)
    if encoding == "deflate":
        return zlib.decompress(raw)
    if encoding in ("", "identity"):
        return raw
    raise ValueError(f"unsupported Content-Encoding {encoding!r}")


#: The process's one endpoint, and how many session fixtures hold it. pytest makes a
#: separate session fixture for every module that imports ``ingestion``, but the exporter
#: is configured once per process and posts to one endpoint: they all share this one.
_shared: list[IngestionServer] = []
_holders = 0
_shared_lock = threading.Lock()


@pytest.fixture(scope="session")
def ingestion() -> Iterator[IngestionServer]:
    """The session's ingestion endpoint (see module doc), the same for every module."""
    global _holders
    with _shared_lock:
        if not _shared:
            _shared.append(IngestionServer().start())
        _holders += 1
        server = _shared[0]
    try:
        yield server
    finally:
        with _shared_lock:
            _holders -= 1
            if _holders == 0:
                _shared.pop().stop()


@pytest.fixture(scope="session")
def azure_monitor(ingestion: IngestionServer) -> Iterator[AzureMonitorTelemetry]:
    """Azure Monitor configured once for the session, exporting to ``ingestion``."""
    for name, value in TEST_ENVIRONMENT.items():
        os.environ[name] = value
    settings = load_settings({"APPLICATIONINSIGHTS_CONNECTION_STRING":
                              ingestion.connection_string})
    telemetry: Telemetry = configure_telemetry(settings, disable_offline_storage=True)
    if not isinstance(telemetry, AzureMonitorTelemetry):
        pytest.fail(f"configure_telemetry gave {type(telemetry).__name__}, not the real "
                    "exporter (see the warning logged by infrabackup.telemetry)", pytrace=False)
    try:
        yield telemetry
    finally:
        # Everything recorded is exported while the endpoint still answers.
        telemetry.flush()
