"""Telemetry: what Azure Monitor sees of each backup (events, metrics, spans).

:class:`Telemetry` is the seam: the backup job calls it, and it never raises into the
job (telemetry must not fail a backup). :class:`NullTelemetry` is used when
``APPLICATIONINSIGHTS_CONNECTION_STRING`` is not set; the service then only logs.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Protocol

from shared.errors import InfraBackupError
from shared.manifest import Manifest
from shared.settings import Settings
from shared.share.base import Capacity

ALERT_EVENT = "InfrastructureBackupAlert"
SUCCESS_EVENT = "InfrastructureBackupSucceeded"


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

    def flush(self) -> None:
        pass


def configure_telemetry(settings: Settings) -> Telemetry:
    """The telemetry for this process (configured once)."""
    return NullTelemetry()
