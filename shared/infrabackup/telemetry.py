"""Telemetry: what Azure Monitor sees of each backup (events, metrics, spans).

:class:`Telemetry` is the seam: the backup job calls it, and it never raises into the
job (telemetry must not fail a backup). :func:`configure_telemetry` returns
:class:`AzureMonitorTelemetry` when ``APPLICATIONINSIGHTS_CONNECTION_STRING`` is set and
:class:`NullTelemetry` otherwise (the service then only logs locally).

What is sent (reference, with the alert-rule queries: docs/TELEMETRY.md):

* one custom event per finished backup: :data:`ALERT_EVENT` when it failed (properties
  :data:`ALERT_PROPERTIES`), :data:`SUCCESS_EVENT` when it succeeded or partially
  succeeded (properties :data:`SUCCESS_PROPERTIES`). An alert rule fires while a stamp's
  newest event is an alert, so the next success closes it;
* one :data:`HEARTBEAT_EVENT` per timer tick (properties :data:`HEARTBEAT_PROPERTIES`,
  built by :mod:`infrabackup.app.heartbeat`): the app is alive, when it ticks next, and whether
  the scheduler is on and a maintenance window open. "No successful backup" fires per
  stamp without a recent success; the heartbeat tells why (skipped, or the app is dead);
* the metrics ``infrabackup.backup.duration``, ``.bytes_written``, ``.throughput``,
  ``.result`` and ``infrabackup.share.free_bytes``;
* one span per backup (a request in Application Insights) with one child span per
  component (in-process dependencies), so a slow component shows in the transaction view.

Nothing secret is ever sent: values come from names, ids, paths and error codes, and the
share is named by its description (``\\\\host\\share\\folder``), which holds no credentials.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Protocol

from infrabackup.alerts import Alert
from infrabackup.errors import InfraBackupError, RefusedError
from infrabackup.manifest import Manifest
from infrabackup.settings import Settings
from infrabackup.share.base import Capacity

log = logging.getLogger("infrabackup.telemetry")

ALERT_EVENT = "InfrastructureBackupAlert"
SUCCESS_EVENT = "InfrastructureBackupSucceeded"
HEARTBEAT_EVENT = "InfrastructureBackupHeartbeat"

#: The customDimensions of :data:`ALERT_EVENT`. The alert rules and the workbook in
#: ``infra/`` query these names: renaming one breaks them.
ALERT_PROPERTIES = (
    "alertName", "description", "remediation", "severity", "backupId", "externalDomain",
    "region", "scaleUnit", "sharePath", "faultCode", "errorCode", "retryable", "stampId",
    "component",
)
#: The customDimensions of :data:`SUCCESS_EVENT`.
SUCCESS_PROPERTIES = (
    "backupId", "externalDomain", "region", "scaleUnit", "sharePath", "status", "sizeBytes",
    "durationSeconds", "stampVersion", "warnings", "stampId",
)

#: The customDimensions of :data:`HEARTBEAT_EVENT` (the alert rules and the workbook query
#: them; times are ISO 8601 UTC, "" when there is none; flags are "true" / "false").
HEARTBEAT_PROPERTIES = (
    "externalDomain", "region", "scaleUnit", "tick", "reason", "backupId", "pastDue",
    "schedule", "nextDueUtc", "schedulerEnabled", "maintenanceOpen", "maintenanceOperation",
    "maintenanceSinceUtc", "staleAfterHours", "lastSuccessUtc", "lastBackupId",
    "lastBackupStatus", "lastBackupAlertName", "version", "stampId", "lastVerifiedUtc",
    "verificationLevel", "recoveryReady", "recoveryReadyReason",
)

#: Azure Monitor severities by name (Sev0 ... Sev4), as alert rules number them.
SEVERITY_LEVELS = {"Critical": 0, "Error": 1, "Warning": 2, "Informational": 3, "Verbose": 4}
#: The ``severity`` property of each alert. Every one is "Error" (Sev1): whatever the
#: cause, the stamp has no fresh backup until an operator or the next run fixes it, and
#: the alert rules in infra/ are Sev1 to match.
ALERT_SEVERITY: Mapping[Alert, str] = {alert: "Error" for alert in Alert}

# Instrument and span names are part of the contract (the workbook queries the metrics).
METER_NAME = "infrabackup"
TRACER_NAME = "infrabackup"
SERVICE_NAME = "infrabackup"  # the cloud role name in Application Insights
#: Custom events are log records of this logger; only it is exported (see _configure).
EVENT_LOGGER = "infrabackup.events"
BACKUP_SPAN = "backup"
COMPONENT_SPAN_PREFIX = "component "
#: How many backups' span contexts are kept for linking their event to their trace.
_REMEMBERED_SPANS = 64

METRIC_DURATION = "infrabackup.backup.duration"
METRIC_BYTES_WRITTEN = "infrabackup.backup.bytes_written"
METRIC_THROUGHPUT = "infrabackup.backup.throughput"
METRIC_RESULT = "infrabackup.backup.result"
METRIC_FREE_BYTES = "infrabackup.share.free_bytes"
#: The ``alert`` attribute of ``infrabackup.backup.result`` for a backup that did not fail.
NO_ALERT = "none"


class Telemetry(Protocol):
    """Contract: no method raises; no secret is ever sent (names and paths only)."""

    def backup(self, backup_id: str, settings: Settings) -> AbstractContextManager[object]:
        """A span around one whole backup."""
        ...

    def component(self, name: str) -> AbstractContextManager[object]:
        """A child span per component (the backup engine's Observer hook)."""
        ...

    def succeeded(self, manifest: Manifest, settings: Settings, share: str,
                  capacity: Capacity | None) -> None: ...

    def failed(self, backup_id: str, error: InfraBackupError, settings: Settings,
               share: str, duration_seconds: float) -> None: ...

    def heartbeat(self, properties: Mapping[str, str]) -> None:
        """One :data:`HEARTBEAT_EVENT` with ``properties`` (:data:`HEARTBEAT_PROPERTIES`)."""
        ...

    def flush(self) -> None: ...


class NullTelemetry:
    """No Azure Monitor configured: nothing is sent."""

    def backup(self, backup_id: str, settings: Settings) -> AbstractContextManager[object]:
        return nullcontext()

    def component(self, name: str) -> AbstractContextManager[object]:
        return nullcontext()

    def succeeded(self, manifest: Manifest, settings: Settings, share: str,
                  capacity: Capacity | None) -> None:
        pass

    def failed(self, backup_id: str, error: InfraBackupError, settings: Settings,
               share: str, duration_seconds: float) -> None:
        pass

    def heartbeat(self, properties: Mapping[str, str]) -> None:
        pass

    def flush(self) -> None:
        pass


# ---- what is sent: pure functions, so the contract can be read and tested in one place ----


def stamp_dimensions(settings: Settings) -> dict[str, str]:
    """stampId (the stamp of the fleet: the alert rules and the workbook split by it),
    externalDomain, region, scaleUnit ("" when unset: the exporter drops absent values).
    Every event and every metric carries them."""
    return {
        "stampId": settings.stamp_id,
        "externalDomain": settings.external_domain or "",
        "region": settings.region or "",
        "scaleUnit": settings.scale_unit or "",
    }


def fault_code(error: InfraBackupError) -> str:
    """The underlying fault (an NTSTATUS, errno name, HTTP status), else the error's code."""
    return error.status or error.code


def alert_properties(backup_id: str, error: InfraBackupError, settings: Settings,
                     share: str) -> dict[str, str]:
    """The customDimensions of :data:`ALERT_EVENT` (exactly :data:`ALERT_PROPERTIES`)."""
    alert = error.alert
    return {
        "alertName": alert.title,
        "description": alert.description,
        "remediation": alert.remediation,
        "severity": ALERT_SEVERITY[alert],
        "backupId": backup_id,
        **stamp_dimensions(settings),
        "sharePath": share,
        "faultCode": fault_code(error),
        "errorCode": error.code,
        "retryable": "true" if error.retryable else "false",
        # The component a corrupted backup was found damaged in (BackupCorrupted); "" else.
        "component": str(getattr(error, "component", None) or ""),
    }


def success_properties(manifest: Manifest, settings: Settings, share: str) -> dict[str, str]:
    """The customDimensions of :data:`SUCCESS_EVENT` (exactly :data:`SUCCESS_PROPERTIES`)."""
    return {
        "backupId": manifest.backup_id,
        **stamp_dimensions(settings),
        "sharePath": share,
        "status": manifest.status,
        "sizeBytes": str(manifest.size_bytes),
        "durationSeconds": f"{manifest.duration_seconds:.3f}",
        "stampVersion": manifest.stamp_version,
        # e.g. the certificate expires soon: a succeeded backup that still needs an operator.
        "warnings": " | ".join(manifest.warnings),
    }


# ---- the Azure Monitor implementation -----------------------------------------------------


@contextlib.contextmanager
def _never_raise(what: str) -> Iterator[None]:
    """Swallow and log a telemetry failure: a backup must not fail because of telemetry.

    Only the exception's type is logged: an SDK message could quote configuration.
    """
    try:
        yield
    except Exception as exc:
        log.warning("telemetry: %s failed (%s); the backup is not affected",
                    what, type(exc).__name__)
        log.debug("telemetry: %s failed", what, exc_info=True)


class AzureMonitorTelemetry:
    """Sends events, metrics and spans through the process's OpenTelemetry providers.

    Made by :func:`configure_telemetry` after ``configure_azure_monitor`` installed the
    providers; every method keeps the :class:`Telemetry` contract (never raises).
    """

    def __init__(self) -> None:
        from opentelemetry import metrics, trace

        from infrabackup import __version__

        self._tracer = trace.get_tracer(TRACER_NAME, __version__)
        meter = metrics.get_meter(METER_NAME, __version__)
        self._duration = meter.create_histogram(
            METRIC_DURATION, unit="s", description="Time one backup took, by result.")
        self._bytes_written = meter.create_counter(
            METRIC_BYTES_WRITTEN, unit="By",
            description="Encrypted bytes written to the share by finished backups.")
        self._throughput = meter.create_histogram(
            METRIC_THROUGHPUT, unit="By/s",
            description="Bytes written per second of a finished backup.")
        self._result = meter.create_counter(
            METRIC_RESULT, unit="{backup}",
            description="Backups by result (Succeeded, PartialSucceeded, Failed) and alert.")
        # A histogram of readings rather than a gauge: one point per reading, at the time
        # it was taken, never a stale value repeated by an idle instance.
        self._free_bytes = meter.create_histogram(
            METRIC_FREE_BYTES, unit="By",
            description="Free capacity of the share, read after each finished backup.")
        self._events = logging.getLogger(EVENT_LOGGER)
        # backup id -> the backup span's context, so the event sent after the span ended
        # still carries its operation id (Application Insights shows them together).
        self._backup_spans: OrderedDict[str, Any] = OrderedDict()
        self._spans_lock = threading.Lock()

    # -- spans --

    @contextlib.contextmanager
    def backup(self, backup_id: str, settings: Settings) -> Iterator[object]:
        from opentelemetry.trace import SpanKind

        # CONSUMER: Application Insights shows the backup as a request (Performance and
        # Failures blades); its components become in-process dependencies below it.
        with self._span(BACKUP_SPAN, SpanKind.CONSUMER,
                        {"backupId": backup_id, **stamp_dimensions(settings)}) as span:
            if span is not None:
                with _never_raise("remembering the backup span"):
                    self._remember(backup_id, span.get_span_context())  # type: ignore[attr-defined]
            yield span

    def _remember(self, backup_id: str, span_context: Any) -> None:
        with self._spans_lock:
            self._backup_spans[backup_id] = span_context
            while len(self._backup_spans) > _REMEMBERED_SPANS:
                self._backup_spans.popitem(last=False)

    def component(self, name: str) -> AbstractContextManager[object]:
        from opentelemetry.trace import SpanKind

        return self._span(COMPONENT_SPAN_PREFIX + name, SpanKind.INTERNAL, {"component": name})

    @contextlib.contextmanager
    def _span(self, name: str, kind: Any, attributes: dict[str, str]) -> Iterator[object]:
        """A current span around the body; the body's exceptions pass through unchanged.

        The exception is not recorded as such (its text and stack are not sent); the span
        gets an error status naming the error's code and, for our own errors, the message,
        which by contract holds no secret.
        """
        span: Any = None
        token: Any = None
        with _never_raise(f"starting span {name!r}"):
            from opentelemetry import context, trace

            span = self._tracer.start_span(name, kind=kind, attributes=attributes)
            token = context.attach(trace.set_span_in_context(span))
        try:
            yield span
        except BaseException as exc:
            if span is not None:
                with _never_raise(f"marking span {name!r} failed"):
                    _mark_failed(span, exc)
            raise
        finally:
            if span is not None:
                with _never_raise(f"ending span {name!r}"):
                    from opentelemetry import context

                    if token is not None:
                        context.detach(token)
                    span.end()

    # -- events and metrics --

    def succeeded(self, manifest: Manifest, settings: Settings, share: str,
                  capacity: Capacity | None) -> None:
        with _never_raise("reporting a finished backup"):
            properties = success_properties(manifest, settings, share)
            self._event(SUCCESS_EVENT, properties, manifest.backup_id,
                        f"Backup {manifest.backup_id} {manifest.status}")
            stamp = stamp_dimensions(settings)
            duration = manifest.duration_seconds
            self._duration.record(duration, {**stamp, "result": manifest.status})
            self._bytes_written.add(manifest.size_bytes, stamp)
            if duration > 0:
                self._throughput.record(manifest.size_bytes / duration, stamp)
            self._result.add(1, {**stamp, "result": manifest.status, "alert": NO_ALERT})
            if capacity is not None:
                self._free_bytes.record(capacity.free_bytes, {**stamp, "sharePath": share})

    def failed(self, backup_id: str, error: InfraBackupError, settings: Settings,
               share: str, duration_seconds: float) -> None:
        """One alert event and the Failed metrics; nothing for a refusal.

        A refusal (maintenance window, another backup holding the stamp lock) is the rules
        working, not a failed backup: it raises no alert and counts as no result.
        """
        if isinstance(error, RefusedError):
            log.info("backup %s refused (%s): no alert is sent", backup_id, error.code)
            with self._spans_lock:
                self._backup_spans.pop(backup_id, None)
            return
        with _never_raise("reporting a failed backup"):
            properties = alert_properties(backup_id, error, settings, share)
            self._event(ALERT_EVENT, properties, backup_id,
                        f"Backup {backup_id} failed: {error.alert.title}")
            stamp = stamp_dimensions(settings)
            self._duration.record(max(duration_seconds, 0.0), {**stamp, "result": "Failed"})
            self._result.add(1, {**stamp, "result": "Failed", "alert": error.alert.title})

    def heartbeat(self, properties: Mapping[str, str]) -> None:
        with _never_raise("reporting the heartbeat"):
            values = {name: str(properties.get(name, "")) for name in HEARTBEAT_PROPERTIES}
            self._event(HEARTBEAT_EVENT, values, "",
                        f"Heartbeat: scheduled run {values['tick']}, next due "
                        f"{values['nextDueUtc'] or 'never'}")

    def _event(self, name: str, properties: dict[str, str], backup_id: str, body: str) -> None:
        from opentelemetry import context, trace

        with self._spans_lock:
            span_context = self._backup_spans.pop(backup_id, None)
        token = None
        if span_context is not None:
            # The record takes its operation id from the current span: make it the backup's.
            token = context.attach(
                trace.set_span_in_context(trace.NonRecordingSpan(span_context)))
        try:
            # The Azure Monitor log exporter turns a record carrying this attribute into a
            # custom event (customEvents) whose customDimensions are the other attributes.
            self._events.info(body, extra={"microsoft.custom_event.name": name, **properties})
        finally:
            if token is not None:
                context.detach(token)

    def flush(self) -> None:
        """Export everything now (spans, events, metrics); metrics otherwise wait 60 s."""
        from opentelemetry import metrics, trace
        from opentelemetry._logs import get_logger_provider

        # Spans first: the events and metrics refer to backups whose spans just ended.
        for what, provider in (("spans", trace.get_tracer_provider()),
                               ("events", get_logger_provider()),
                               ("metrics", metrics.get_meter_provider())):
            with _never_raise(f"flushing {what}"):
                force_flush = getattr(provider, "force_flush", None)
                if force_flush is not None:
                    force_flush()


def _mark_failed(span: Any, exc: BaseException) -> None:
    from opentelemetry.trace import Status, StatusCode

    if isinstance(exc, RefusedError):
        # A refused run (maintenance window, lock held) is not a failure: the request
        # stays successful and says why it did nothing.
        span.set_attribute("refused", exc.code)
    elif isinstance(exc, InfraBackupError):
        span.set_attribute("errorCode", exc.code)
        span.set_attribute("faultCode", fault_code(exc))
        span.set_attribute("alertName", exc.alert.title)
        span.set_status(Status(StatusCode.ERROR, f"{exc.code}: {exc.message}"))
    else:
        span.set_status(Status(StatusCode.ERROR, type(exc).__name__))


# ---- configuration, once per process --------------------------------------------------------

_lock = threading.Lock()
_configured: Telemetry | None = None


def configure_telemetry(settings: Settings, **options: Any) -> Telemetry:
    """The telemetry for this process; never raises.

    Without ``APPLICATIONINSIGHTS_CONNECTION_STRING``: :class:`NullTelemetry` (the
    service logs locally only). With it: Azure Monitor is configured on the first call
    (``configure_azure_monitor`` installs process-wide providers, so later calls return
    the same object whatever they pass). ``options`` go to ``configure_azure_monitor``
    and override the defaults of :func:`azure_monitor_options` (tests turn offline
    storage off). If configuration fails, a warning is logged and NullTelemetry returned
    for the rest of the process: a half-configured SDK is not retried.
    """
    global _configured
    secret = settings.appinsights_connection_string
    if not secret:
        log.info("APPLICATIONINSIGHTS_CONNECTION_STRING is not set: telemetry is not sent")
        return NullTelemetry()
    with _lock:
        if _configured is None:
            _configured = NullTelemetry()
            with _never_raise("configuring Azure Monitor"):
                _configure(secret.reveal(), options)
                _configured = AzureMonitorTelemetry()
                log.info("telemetry is sent to Azure Monitor")
        return _configured


def azure_monitor_options(connection_string: str) -> dict[str, Any]:
    """The ``configure_azure_monitor`` arguments this service uses, and why."""
    from opentelemetry.sdk.resources import Resource

    return {
        "connection_string": connection_string,
        "resource": Resource.create({"service.name": SERVICE_NAME}),
        # Only the event logger is exported. The Functions host already forwards the
        # service's own log lines; exporting the root logger would duplicate them and
        # send every library's log records too.
        "logger_name": EVENT_LOGGER,
        # A backup runs a few times a day: keep every trace rather than sample.
        "sampling_ratio": 1.0,
        # The Functions host provides live metrics and performance counters itself.
        "enable_live_metrics": False,
        "enable_performance_counters": False,
        # Spans of Key Vault and Storage calls through azure-core (URLs sanitised by
        # azure-core) are useful; raw HTTP client spans would duplicate them and could
        # carry a query string (a SAS token) unredacted. No web framework is used.
        "instrumentation_options": {
            name: {"enabled": False}
            for name in ("django", "fastapi", "flask", "httpx", "httpx2", "psycopg2",
                         "requests", "urllib", "urllib3")
        },
    }


def _configure(connection_string: str, options: Mapping[str, Any]) -> None:
    from azure.monitor.opentelemetry import configure_azure_monitor

    events = logging.getLogger(EVENT_LOGGER)
    # Events are sent whatever the root level is (the Functions worker sets its own), and
    # are not repeated as local log lines (the backup already logged its outcome).
    events.setLevel(logging.INFO)
    events.propagate = False
    configure_azure_monitor(**{**azure_monitor_options(connection_string), **options})
