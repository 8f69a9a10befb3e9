"""The backup manifest: what a finished backup is, as written to ``manifest.json``.

The manifest is plain JSON (readable without keys, so ``list`` and ``show`` work
anywhere) and carries an HMAC under a key derived from the backup's data key, so once
the data key is unwrapped every field is authenticated. Field reference: docs/FORMAT.md.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from infrabackup.errors import IntegrityError, PathError
from infrabackup.layout import StampLayout, backup_id_or_none, parse_timestamp
from infrabackup.names import json_text
from infrabackup.settings import is_safe_name
from infrabackup.share.base import check_path
from infrabackup.stream.encryption import (
    COMPRESSION_NAMES,
    DIGESTS,
    MAX_SEGMENT_SIZE,
    MIN_SEGMENT_SIZE,
    manifest_key,
)

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
    #: Stream format 2 records the BLAKE3 digest of the .bin instead of its SHA-256.
    blake3: str | None = None
    files: int = 0
    folders: int = 0
    duration_seconds: float = 0.0
    message: str | None = None
    changed: list[str] = field(default_factory=list)
    vanished: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        extra = {"blake3": self.blake3} if self.blake3 is not None else {}
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
            **extra,
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
            blake3=data.get("blake3"),
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

    @property
    def digest_name(self) -> str:
        """The whole-file digest its components record: ``sha256`` (stream format 1) or
        ``blake3`` (2); parse checked that every succeeded component has it."""
        return DIGESTS[int(self.stream.get("format") or 1)]

    def expected_digest(self, record: ComponentRecord) -> str | None:
        """The recorded hex digest of ``record``'s stream (:attr:`digest_name`)."""
        return record.blake3 if self.digest_name == "blake3" else record.sha256

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
        """Parse and validate manifest.json bytes.

        Every field is checked against the schema of docs/FORMAT.md before any is used
        (types, ranges, finite numbers, timezone-aware times, safe names, paths as the
        layout derives them, bounded nesting), so whatever the bytes, the only exception
        is one IntegrityError naming ``where`` and what is wrong, and a Manifest that is
        returned can be listed, compared, printed and pruned without further checks.
        """
        try:
            data = _load(raw)
            if type(data.get("format")) is not int or data["format"] != MANIFEST_FORMAT:
                raise IntegrityError(
                    f"{where}: manifest format {_show(data.get('format'))} is not supported "
                    f"by this build (it reads format {MANIFEST_FORMAT})."
                )
            _check_schema(data)
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
        except _Invalid as exc:
            raise IntegrityError(
                f"{where} is not a valid manifest: {exc}; the backup cannot be used."
            ) from None


# --- validation -----------------------------------------------------------------------

#: How deeply a manifest's JSON may nest: the schema needs four levels (components, one
#: component, its lists); anything deeper is refused before a field is read.
MAX_DEPTH = 6
#: Counts and byte sizes are non-negative and fit a signed 64-bit integer.
MAX_COUNT = 2**63 - 1
#: More components than any stamp has sources: bounds the work of listing one manifest.
MAX_COMPONENTS = 1000
FINISHED = ("Succeeded", "PartialSucceeded")
COMPONENT_STATUSES = ("Succeeded", "Failed")
#: Encryption modes, and the field naming the key each needs (a hex string of that length).
KEY_NAMES = {"certificate": ("thumbprint", 40), "legacyKey": ("keyId", 16)}
_HEX = re.compile(r"[0-9A-Fa-f]+")
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")  # SHA-256 and BLAKE3 alike


_KIND_NAMES = {str: "a string", int: "an integer", float: "a number", dict: "an object",
               list: "a list", type(None): "null"}


class _Invalid(Exception):
    """What is wrong with a manifest; :meth:`Manifest.parse` turns it into IntegrityError."""


def _show(value: Any) -> str:
    """A short, printable rendering of a bad value for a message."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _reject_constant(name: str) -> Any:
    raise _Invalid(f"it holds the non-finite number {name}")


def _load(raw: bytes) -> dict[str, Any]:
    """The JSON object in ``raw``, every value in it finite, valid text and shallow."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _Invalid("it is not UTF-8 text") from None
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise _Invalid(f"its JSON nests deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:  # JSONDecodeError, or an integer of thousands of digits
        raise _Invalid(f"it is not JSON ({str(exc)[:80]})") from None
    if not isinstance(data, dict):
        raise _Invalid(f"it is a JSON {type(data).__name__}, not an object")
    _check_values(data, "", 0)
    return data


def _check_values(value: Any, where: str, depth: int) -> None:
    """Every value below ``value``: finite numbers, text that encodes as UTF-8, bounded depth."""
    if isinstance(value, dict | list):
        if depth >= MAX_DEPTH:
            raise _Invalid(f"its JSON nests deeper than {MAX_DEPTH} levels (at {where or '/'})")
        if isinstance(value, dict):
            for key, item in value.items():
                _check_text(key, where)
                _check_values(item, f"{where}.{key}" if where else key, depth + 1)
        else:
            for index, item in enumerate(value):
                _check_values(item, f"{where}[{index}]", depth + 1)
    elif isinstance(value, str):
        _check_text(value, where)
    elif isinstance(value, float) and not math.isfinite(value):
        raise _Invalid(f"{where} is the non-finite number {value}")


def _check_text(text: str, where: str) -> None:
    """Valid Unicode, or a file name's undecodable bytes as U+DC80..U+DCFF (the only lone
    surrogates a writer produces: :mod:`infrabackup.names`)."""
    try:
        text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise _Invalid(f"{where or '/'} holds text that is not valid Unicode") from None


def _get(obj: dict[str, Any], key: str, where: str, kinds: tuple[type, ...], *,
         required: bool = True) -> Any:
    """``obj[key]`` if it has one of ``kinds`` (bool is never a number); None if absent
    and not required."""
    if key not in obj:
        if required:
            raise _Invalid(f"{where}{key} is missing")
        return None
    value = obj[key]
    if (type(value) is bool and bool not in kinds) or not isinstance(value, kinds):
        shown = [k for k in kinds if not (k is int and float in kinds)]  # a number covers both
        names = " or ".join(_KIND_NAMES.get(k, k.__name__) for k in shown)
        raise _Invalid(f"{where}{key} is {_show(value)}, not {names}")
    return value


def _count(obj: dict[str, Any], key: str, where: str) -> None:
    value = _get(obj, key, where, (int,), required=False)
    if value is not None and not 0 <= value <= MAX_COUNT:
        raise _Invalid(f"{where}{key} is {_show(value)}, outside 0..{MAX_COUNT}")


def _seconds(obj: dict[str, Any], key: str, where: str) -> None:
    value = _get(obj, key, where, (int, float), required=False)
    if value is not None and value < 0:
        raise _Invalid(f"{where}{key} is {_show(value)}, not a duration")


def _time(obj: dict[str, Any], key: str) -> dt.datetime:
    text = _get(obj, key, "", (str,))
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise _Invalid(f"{key} {_show(text)} is not an ISO 8601 time") from None
    if when.utcoffset() is None:
        raise _Invalid(f"{key} {_show(text)} has no time zone (it must be UTC, +00:00)")
    return when


def _hex(obj: dict[str, Any], key: str, where: str, length: int, *,
         required: bool = True) -> None:
    value = _get(obj, key, where, (str,), required=required)
    if value is not None and (len(value) != length or not _HEX.fullmatch(value)):
        raise _Invalid(f"{where}{key} {_show(value)} is not {length} hex digits")


def _check_schema(data: dict[str, Any]) -> None:
    """The manifest's fields as docs/FORMAT.md defines them, and consistent with each
    other. Paths on the share and on restore derive from ids and names, so these must be
    what the writer could have produced: a GUID, the folder timestamp, safe names."""
    backup_id = _get(data, "backupId", "", (str,))
    if backup_id_or_none(backup_id) != backup_id:
        raise _Invalid(f"backupId {_show(backup_id)} is not a lower-case GUID")
    timestamp = _get(data, "timestamp", "", (str,))
    started = parse_timestamp(timestamp)
    if started is None:
        raise _Invalid(f"timestamp {_show(timestamp)} is not yyyyMMddTHHmmssZ")
    status = _get(data, "status", "", (str,))
    if status not in FINISHED:
        raise _Invalid(f"status {_show(status)} is not one of {', '.join(FINISHED)}")
    created = _time(data, "createdUtc")
    _time(data, "completedUtc")
    if not dt.timedelta(0) <= created - started < dt.timedelta(seconds=1):
        raise _Invalid(f"createdUtc {data['createdUtc']} is not the time of its folder "
                       f"{timestamp}")
    # completed - created of the wall clock, which may step back: any finite number.
    _get(data, "durationSeconds", "", (int, float), required=False)
    _count(data, "sizeBytes", "")
    layout = _check_stamp(_get(data, "stamp", "", (dict,)))
    _check_encryption(_get(data, "encryption", "", (dict,)))
    stream = _get(data, "stream", "", (dict,), required=False)
    digest_key = _check_stream(stream) if stream is not None else DIGESTS[1]
    components = _get(data, "components", "", (list,))
    if not 1 <= len(components) <= MAX_COMPONENTS:
        raise _Invalid(f"it lists {len(components)} components (1..{MAX_COMPONENTS})")
    seen: set[str] = set()
    for index, component in enumerate(components):
        name = _check_component(component, index, layout, timestamp, backup_id, digest_key)
        if name.lower() in seen:
            raise _Invalid(f"component {name} is listed twice")
        seen.add(name.lower())
    ok = sum(1 for c in components if c["status"] == "Succeeded")
    expected = "Succeeded" if ok == len(components) else "PartialSucceeded"
    if ok == 0 or status != expected:
        raise _Invalid(f"status {status} does not match its components ({ok} of "
                       f"{len(components)} succeeded)")
    for warning in _get(data, "warnings", "", (list,), required=False) or []:
        if not isinstance(warning, str):
            raise _Invalid(f"warnings hold {_show(warning)}, not text")
    _get(data, "mac", "", (str, type(None)), required=False)


def _check_stamp(stamp: dict[str, Any]) -> StampLayout:
    """The stamp's fields; the layout its component paths derive from."""
    domain = _get(stamp, "externalDomain", "stamp.", (str,))
    region = _get(stamp, "region", "stamp.", (str,))
    for key, value in (("externalDomain", domain), ("region", region)):
        # Folder names of the layout (the catalog checks they are the listed stamp's).
        if "/" in value or not _is_path(value):
            raise _Invalid(f"stamp.{key} {_show(value)} is not a folder name")
    scale_unit = _get(stamp, "scaleUnit", "stamp.", (str, type(None)), required=False)
    if scale_unit is not None and not is_safe_name(scale_unit):
        raise _Invalid(f"stamp.scaleUnit {_show(scale_unit)} is not a safe folder name")
    _get(stamp, "version", "stamp.", (str,), required=False)
    return StampLayout(domain, region, scale_unit)


def _is_path(text: str) -> bool:
    try:
        check_path(text)
    except PathError:
        return False
    return True


def _check_encryption(encryption: dict[str, Any]) -> None:
    mode = _get(encryption, "mode", "encryption.", (str,))
    if mode not in KEY_NAMES:
        raise _Invalid(f"encryption.mode {_show(mode)} is not one of {', '.join(KEY_NAMES)}")
    _get(encryption, "wrappedKey", "encryption.", (str,))
    key, length = KEY_NAMES[mode]
    _hex(encryption, key, "encryption.", length)
    if mode == "certificate":
        _hex(encryption, "thumbprintSha256", "encryption.", 64, required=False)


def _check_stream(stream: dict[str, Any]) -> str:
    """Check ``stream``; the name of the whole-file digest its format records
    (``sha256`` for format 1, ``blake3`` for 2)."""
    version = _get(stream, "format", "stream.", (int,), required=False)
    if version is not None and version not in DIGESTS:
        raise _Invalid(f"stream.format {_show(version)} is not one of "
                       f"{', '.join(map(str, DIGESTS))}")
    size = _get(stream, "segmentSize", "stream.", (int,), required=False)
    if size is not None and not MIN_SEGMENT_SIZE <= size <= MAX_SEGMENT_SIZE:
        raise _Invalid(f"stream.segmentSize {size} is outside "
                       f"{MIN_SEGMENT_SIZE}..{MAX_SEGMENT_SIZE}")
    compression = _get(stream, "compression", "stream.", (str,), required=False)
    if compression is not None and compression not in COMPRESSION_NAMES.values():
        raise _Invalid(f"stream.compression {_show(compression)} is unknown")
    return DIGESTS[version or 1]


def _check_component(component: Any, index: int, layout: StampLayout, timestamp: str,
                     backup_id: str, digest_key: str) -> str:
    """One entry of ``components``; its name. A succeeded one must carry the digest
    ``digest_key`` its stream format records (64 lower-case hex digits)."""
    if not isinstance(component, dict):
        raise _Invalid(f"components[{index}] is {_show(component)}, not an object")
    name = _get(component, "name", f"components[{index}].", (str,))
    if not is_safe_name(name):
        raise _Invalid(f"component name {_show(name)} is not a safe name")
    where = f"component {name}: "
    _get(component, "scope", where, (str,), required=False)
    scope = component.get("scope", "backup")
    if scope not in ("backup", "region"):
        raise _Invalid(f"{where}scope {_show(scope)} is unknown")
    _get(component, "sourceType", where, (str,), required=False)
    status = _get(component, "status", where, (str,))
    if status not in COMPONENT_STATUSES:
        raise _Invalid(f"{where}status {_show(status)} is not Succeeded or Failed")
    for key in ("plaintextBytes", "ciphertextBytes", "files", "folders"):
        _count(component, key, where)
    _seconds(component, "durationSeconds", where)
    _get(component, "message", where, (str, type(None)), required=False)
    for key in ("changedDuringBackup", "vanishedDuringBackup", "skipped"):
        _get(component, key, where, (list,), required=False)
    file = _get(component, "file", where, (str, type(None)), required=False)
    for key in DIGESTS.values():
        _get(component, key, where, (str, type(None)), required=False)
    digest = component.get(digest_key)
    if status == "Succeeded":
        # Derived, never trusted: readers read and prune deletes exactly this path.
        expected = layout.component_file(timestamp, backup_id, name, scope)
        if file != expected:
            raise _Invalid(f"{where}file {_show(file)} is not where the component must be "
                           f"({expected})")
        if digest is None or not _HEX_DIGEST.fullmatch(digest):
            raise _Invalid(f"{where}{digest_key} {_show(digest)} is not 64 lower-case hex "
                           "digits")
    elif file is not None:
        raise _Invalid(f"{where}it failed but names a file {_show(file)}")
    return name


# --- authentication ----------------------------------------------------------------


def canonical_json(obj: Any) -> bytes:
    """The bytes the manifest MAC covers: sorted keys, no spaces, UTF-8.

    A lone surrogate (a name byte that is not UTF-8, :mod:`infrabackup.names`) is encoded as
    its three ``surrogatepass`` bytes; any other text encodes exactly as plain UTF-8, so
    manifests written before such names were possible keep their MAC.
    """
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8", "surrogatepass")


def manifest_mac(data_key: bytes, body: dict[str, Any]) -> str:
    """HMAC-SHA256 (hex) of the manifest without its ``mac`` field."""
    return hmac.new(manifest_key(data_key), canonical_json(body), hashlib.sha256).hexdigest()


def check_manifest_mac(data_key: bytes, manifest: dict[str, Any]) -> None:
    """Raise IntegrityError unless the manifest's ``mac`` matches its content."""
    body = {k: v for k, v in manifest.items() if k != "mac"}
    expected = manifest_mac(data_key, body)
    if not hmac.compare_digest(expected, str(manifest.get("mac", ""))):
        raise IntegrityError(
            "manifest.json failed authentication: it was modified after the backup was "
            "written."
        )
