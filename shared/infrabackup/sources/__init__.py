"""What gets backed up: one source per entry of ``BACKUP_SOURCES``, each a component.

Three source types (docs/SOURCES.md), one module each, each with its reader (the
:class:`~infrabackup.sources.base.Source` protocol) and its restore writer:
``directory`` (:mod:`.directory`), ``smb`` (:mod:`.smb`) and ``blob`` (:mod:`.blob`).
:mod:`.base` holds the protocols and the rules they share. This module builds them; the
SMB and blob modules (and their SDKs) are imported only when such a source is used.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from infrabackup.settings import Settings, SourceSpec
from infrabackup.sources.base import (
    InterruptedSwapError,
    Source,
    SourceEntry,
    SourceError,
    Tree,
)
from infrabackup.sources.directory import DirectorySource, LocalTree

if TYPE_CHECKING:
    from infrabackup.sources.blob import BlobSite

__all__ = [
    "DirectorySource",
    "InterruptedSwapError",
    "Source",
    "SourceEntry",
    "SourceError",
    "open_blob_site",
    "open_source",
    "open_tree",
]


def open_source(spec: SourceSpec, settings: Settings | None = None) -> Source:
    """The source for a spec; SMB and blob sources take their credentials from ``settings``.

    Raises SourceError when the source cannot be built (a credential setting missing).
    """
    if spec.type == "directory":
        return DirectorySource(spec)
    if settings is None:
        raise SourceError(
            f"source {spec.name}: a {spec.type} source needs the settings that hold its "
            "credentials (internal error: none were given)."
        )
    if spec.type == "smb":
        from infrabackup.sources.smb import SmbSource  # local: keeps smbprotocol off this import

        return SmbSource(spec, settings)
    if spec.type == "blob":
        from infrabackup.sources.blob import BlobSource

        return BlobSource(spec, settings)
    raise SourceError(f"source {spec.name}: unknown source type '{spec.type}'.")


def open_tree(spec: SourceSpec, settings: Settings) -> Tree:
    """The restore writer of a folder source (directory, SMB). Close it when done."""
    if spec.type == "directory":
        assert spec.path is not None
        return LocalTree(spec, Path(spec.path))
    if spec.type == "smb":
        from infrabackup.sources.smb import SmbSource, SmbTree

        return SmbTree(SmbSource(spec, settings))
    raise SourceError(f"source {spec.name}: a {spec.type} source is not a folder.")


def open_blob_site(spec: SourceSpec, settings: Settings) -> BlobSite:
    """The restore writer of a blob source (its container). Close it when done."""
    from infrabackup.sources.blob import BlobSite, BlobSource

    return BlobSite(BlobSource(spec, settings))
