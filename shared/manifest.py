"""The backup manifest: what a finished backup is, as written to ``manifest.json``.

The manifest is plain JSON (readable without keys, so ``list`` and ``show`` work
anywhere) and carries an HMAC under a key derived from the backup's data key, so once
the data key is unwrapped every field is authenticated. Field reference: docs/FORMAT.md.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any

from shared.encryption import manifest_mac
from shared.errors import IntegrityError
from shared.layout import backup_id_or_none, parse_timestamp
from shared.names import json_text
from shared.settings import is_safe_name

MANIFEST_FORMAT = 1
STATUSES = ("Queued", "Running", "Succeeded", "PartialSucceeded", "Failed", "Skipped")


@dataclass
class ComponentRecord:
    """One component's outcome. ``file`` is share-relative; absent when it failed."""

    name: str
    scope: str
    source_type: str
    status: str  # Succeeded | Failed
    file: str | None = None
    plaintext_bytes: int = 0
    ciphertext_bytes: int = 0
    sha256: str | None = None
    files: int = 0
    folders: int = 0
    duration_seconds: float = 0.0
    message: str | None = None
    changed: list[str] = field(default_factory=list)
    vanished: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "scope": self.scope,
            "sourceType": self.source_type,
            "status": self.status,
            "file": self.file,
            "plaintextBytes": self.plaintext_bytes,
            "ciphertextBytes": self.ciphertext_bytes,
            "sha256": self.sha256,
            "files": self.files,
            "folders": self.folders,
            "durationSeconds": round(self.duration_seconds, 3),
            "message": self.message,
            "changedDuringBackup": self.changed,
            "vanishedDuringBackup": self.vanished,
            "skipped": self.skipped,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ComponentRecord:
        return cls(
            name=data["name"],
            scope=data.get("scope", "backup"),
            source_type=data.get("sourceType", "directory"),
            status=data["status"],
            file=data.get("file"),
            plaintext_bytes=int(data.get("plaintextBytes", 0)),
            ciphertext_bytes=int(data.get("ciphertextBytes", 0)),
            sha256=data.get("sha256"),
            files=int(data.get("files", 0)),
            folders=int(data.get("folders", 0)),
            duration_seconds=float(data.get("durationSeconds", 0.0)),
            message=data.get("message"),
            changed=list(data.get("changedDuringBackup", [])),
            vanished=list(data.get("vanishedDuringBackup", [])),
            skipped=list(data.get("skipped", [])),
        )


@dataclass
class Manifest:
    """A finished backup (Succeeded or PartialSucceeded)."""

    backup_id: str
    timestamp: str
    status: str
    created: dt.datetime
    completed: dt.datetime
    stamp: dict[str, Any]
    encryption: dict[str, Any]
    components: list[ComponentRecord]
    warnings: list[str] = field(default_factory=list)
    stream: dict[str, Any] = field(default_factory=dict)
    mac: str | None = None
    #: The JSON object exactly as read from the share: what the MAC is checked against.
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def duration_seconds(self) -> float:
        return (self.completed - self.created).total_seconds()

    @property
    def size_bytes(self) -> int:
        return sum(c.ciphertext_bytes for c in self.components)

    @property
    def stamp_version(self) -> str:
        return str(self.stamp.get("version", ""))

    @property
    def thumbprint(self) -> str | None:
        value = self.encryption.get("thumbprint")
        return str(value) if value else None

    def component(self, name: str) -> ComponentRecord | None:
        return next((c for c in self.components if c.name.lower() == name.lower()), None)

    def body(self) -> dict[str, Any]:
        """Everything the MAC covers (the manifest without ``mac``)."""
        return {
            "format": MANIFEST_FORMAT,
            "backupId": self.backup_id,
            "timestamp": self.timestamp,
            "status": self.status,
            "createdUtc": self.created.isoformat(),
            "completedUtc": self.completed.isoformat(),
            "durationSeconds": round(self.duration_seconds, 3),
            "sizeBytes": self.size_bytes,
            "stamp": self.stamp,
            "encryption": self.encryption,
            "stream": self.stream,
            "components": [c.to_dict() for c in self.components],
            "warnings": self.warnings,
        }

    def seal(self, data_key: bytes) -> bytes:
        """The manifest.json bytes with its MAC; sets ``self.mac``."""
        body = self.body()
        self.mac = manifest_mac(data_key, body)
        self.raw = {**body, "mac": self.mac}
        text = json.dumps({**body, "mac": self.mac}, indent=2, ensure_ascii=False)
        return (json_text(text) + "\n").encode()

    def to_dict(self) -> dict[str, Any]:
        """The JSON shown by ``show --json`` (the manifest as stored)."""
        return {**self.body(), "mac": self.mac}

    @classmethod
    def parse(cls, raw: bytes, where: str) -> Manifest:
        """Parse manifest.json bytes; IntegrityError naming ``where`` if malformed."""
        try:
            data = json.loads(raw.decode("utf-8"))
            if data.get("format") != MANIFEST_FORMAT:
                raise IntegrityError(
                    f"{where}: manifest format {data.get('format')} is not supported by this "
                    f"build (it reads format {MANIFEST_FORMAT})."
                )
            _check_names(data, where)
            return cls(
                backup_id=data["backupId"],
                timestamp=data["timestamp"],
                status=data["status"],
                created=dt.datetime.fromisoformat(data["createdUtc"]),
                completed=dt.datetime.fromisoformat(data["completedUtc"]),
                stamp=dict(data["stamp"]),
                encryption=dict(data["encryption"]),
                components=[ComponentRecord.from_dict(c) for c in data["components"]],
                warnings=list(data.get("warnings", [])),
                stream=dict(data.get("stream", {})),
                mac=data.get("mac"),
                raw=data,
            )
        except IntegrityError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise IntegrityError(
                f"{where} is not a valid manifest ({exc.__class__.__name__}: {exc}); the "
                "backup cannot be used."
            ) from None


def _check_names(data: dict[str, Any], where: str) -> None:
    """Refuse a manifest whose ids or names could steer a path anywhere unexpected.

    Paths on the share and on restore are derived from these names, so they must be what
    the writer could have produced: a GUID, a timestamp, safe component and scale-unit
    names, a known scope.
    """
    problems = []
    if backup_id_or_none(str(data["backupId"])) != data["backupId"]:
        problems.append(f"backupId {data['backupId']!r} is not a GUID")
    if parse_timestamp(str(data["timestamp"])) is None:
        problems.append(f"timestamp {data['timestamp']!r} is not yyyyMMddTHHmmssZ")
    scale_unit = data["stamp"].get("scaleUnit")
    if scale_unit is not None and not is_safe_name(str(scale_unit)):
        problems.append(f"scale unit {scale_unit!r} is not a safe folder name")
    for component in data["components"]:
        if not is_safe_name(str(component["name"])):
            problems.append(f"component name {component['name']!r} is not a safe name")
        if component.get("scope", "backup") not in ("backup", "region"):
            problems.append(f"component scope {component.get('scope')!r} is unknown")
    if problems:
        raise IntegrityError(f"{where} is not a valid manifest: {'; '.join(problems)}.")
