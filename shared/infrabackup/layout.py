"""Where things live on the share (see docs/FORMAT.md), and the clock that names them::

    <domain>/<region>/MASBackup/<yyyyMMddTHHmmssZ>/<backup id>/manifest.json
    <domain>/<region>/MASBackup/<yyyyMMddTHHmmssZ>/<backup id>/<component>.bin
    <domain>/<region>/<Name>[/<scale unit>]/<yyyyMMddTHHmmssZ>/<backup id>.bin   (scope region)
    <domain>/<region>/infrabackup.lock                                       (the stamp lock)

Nothing but backup folders is ever created inside MASBackup: the lock lives beside it.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from infrabackup.errors import ConfigError
from infrabackup.inputs import quote
from infrabackup.share.base import join

if TYPE_CHECKING:
    from infrabackup.settings import Settings

MASBACKUP = "MASBackup"
MANIFEST = "manifest.json"
LOCK_FILE = "infrabackup.lock"
TIMESTAMP_FORMAT = "%Y%m%dT%H%M%SZ"
# ASCII digits, matched whole: \d takes any Unicode digit and $ a final newline, which
# strptime then refuses with a ValueError.
TIMESTAMP_RE = re.compile(r"[0-9]{8}T[0-9]{6}Z", re.ASCII)
#: A GUID as ids are written (hyphens optional): uuid.UUID alone also takes Unicode
#: digits and underscores (int(..., 16) does), so "4_5" would name another backup.
_GUID_RE = re.compile(r"[0-9a-fA-F]{8}-?(?:[0-9a-fA-F]{4}-?){3}[0-9a-fA-F]{12}", re.ASCII)


#: What every run asks for the time (a test seam: backups of a fixed moment).
Clock = Callable[[], dt.datetime]


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def format_timestamp(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime(TIMESTAMP_FORMAT)


def parse_timestamp(text: str) -> dt.datetime | None:
    """The UTC time a ``YYYYMMDDTHHMMSSZ`` folder name stands for; None for any other name,
    a date that does not exist (month 13, 30 February) included: such a folder is not ours."""
    if not TIMESTAMP_RE.fullmatch(text):
        return None
    try:
        return dt.datetime.strptime(text, TIMESTAMP_FORMAT).replace(tzinfo=dt.UTC)
    except ValueError:
        return None


def parse_backup_id(text: str) -> str:
    """The canonical (lowercase, hyphenated) form of a backup id; ConfigError if not a GUID."""
    bare = text.strip().strip("{}") if isinstance(text, str) else ""
    if _GUID_RE.fullmatch(bare):
        return str(uuid.UUID(bare))
    raise ConfigError(
        f"{quote(text)} is not a backup id: backup ids are GUIDs, e.g. "
        "3f2b8c1e-4d5a-4b6c-9e7f-0a1b2c3d4e5f ('infrabackup list' shows them)."
    )


def backup_id_or_none(text: str) -> str | None:
    """The canonical backup id if ``text`` is one, else None (for scanning folders)."""
    return str(uuid.UUID(text)) if _GUID_RE.fullmatch(text) else None


@dataclass(frozen=True)
class StampLayout:
    """Paths for one stamp (external domain + region, and scale unit for OEM data)."""

    domain: str
    region: str
    scale_unit: str | None = None

    @property
    def region_root(self) -> str:
        return join(self.domain, self.region)

    @property
    def masbackup(self) -> str:
        return join(self.region_root, MASBACKUP)

    @property
    def lock(self) -> str:
        return join(self.region_root, LOCK_FILE)

    def backup_dir(self, timestamp: str, backup_id: str) -> str:
        return join(self.masbackup, timestamp, backup_id)

    def manifest(self, timestamp: str, backup_id: str) -> str:
        return join(self.backup_dir(timestamp, backup_id), MANIFEST)

    def component_file(self, timestamp: str, backup_id: str, name: str, scope: str) -> str:
        """Share path of a component's stream (``scope`` is ``backup`` or ``region``)."""
        if scope == "region":
            return join(self.region_component_dir(name), timestamp, f"{backup_id}.bin")
        return join(self.backup_dir(timestamp, backup_id), f"{name}.bin")

    def region_component_dir(self, name: str) -> str:
        return join(self.region_root, name, self.scale_unit or "")


def stamp_layout(settings: Settings) -> StampLayout:
    """The share layout of the configured stamp (domain and region required)."""
    settings.require("BACKUP_EXTERNAL_DOMAIN", "BACKUP_REGION")
    assert settings.external_domain and settings.region
    return StampLayout(settings.external_domain, settings.region, settings.scale_unit)
