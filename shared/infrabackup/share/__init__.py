"""The share: one small interface (:mod:`infrabackup.share.base`), two implementations."""

from __future__ import annotations

from infrabackup.errors import ConfigError
from infrabackup.settings import Settings, UncPath
from infrabackup.share.base import Capacity, Entry, Share, join
from infrabackup.share.local import LocalShare

__all__ = ["Capacity", "Entry", "LocalShare", "Share", "join", "open_share"]


def open_share(settings: Settings) -> Share:
    """The share named by ``BACKUP_SHARE_PATH``: SMB for a UNC path, else a local folder.

    Opening does no I/O; the first operation connects (and may raise a ShareError).
    """
    path = settings.share_path
    if path is None:
        settings.require("BACKUP_SHARE_PATH")
        raise ConfigError("BACKUP_SHARE_PATH: not set.")  # pragma: no cover - require raised
    if isinstance(path, UncPath):
        from infrabackup.share.smb import SmbShare  # smbprotocol is only imported when used

        return SmbShare.from_settings(settings)
    return LocalShare(path)
