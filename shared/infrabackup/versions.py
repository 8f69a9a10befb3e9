"""Stamp versions and the restore version rule.

A stamp version is ``MAJOR.RELEASE[.BUILD[.REVISION]]`` as Azure Stack Hub prints it,
e.g. ``1.2408.1.50``. Its *release* is the first two parts (``1.2408``). Releases are
ordered by that pair, numerically. The seeds: restore is not supported when the
redeployed instance is more than one release newer than the backup. The number of
releases between two versions is counted on the known release train
(:data:`KNOWN_RELEASES`) merged with the two releases being compared, so releases
that are not in the list still order correctly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from infrabackup.errors import ConfigError, RefusedError
from infrabackup.inputs import quote

# [0-9], not \d (any Unicode digit), and fullmatch, not $ (which allows a final newline).
_VERSION_RE = re.compile(r"([0-9]{1,4})\.([0-9]{1,6})(?:\.([0-9]{1,9}))?(?:\.([0-9]{1,9}))?")

#: Azure Stack Hub releases in order (1.YYMM). Used only to count releases in a gap.
KNOWN_RELEASES: tuple[tuple[int, int], ...] = tuple(
    (1, r)
    for r in (
        1807, 1808, 1809, 1811, 1901, 1902, 1903, 1904, 1905, 1906, 1907, 1908, 1910,
        2002, 2005, 2008, 2102, 2108, 2206, 2301, 2306, 2311, 2406, 2408, 2501,
    )
)


@dataclass(frozen=True, order=True)
class StampVersion:
    major: int
    release: int
    build: int = 0
    revision: int = 0

    @property
    def release_key(self) -> tuple[int, int]:
        return (self.major, self.release)

    def __str__(self) -> str:
        return f"{self.major}.{self.release}.{self.build}.{self.revision}"


def parse_version(text: str) -> StampVersion:
    """Parse a stamp version; ConfigError with an example when it is not one."""
    match = _VERSION_RE.fullmatch(text.strip())
    if not match:
        raise ConfigError(
            f"{quote(text)} is not a stamp version MAJOR.RELEASE[.BUILD[.REVISION]]. "
            "Example: 1.2408.1.50."
        )
    parts = [int(p) if p is not None else 0 for p in match.groups()]
    return StampVersion(*parts)


def release_gap(backup: StampVersion, target: StampVersion) -> int:
    """How many releases ``target`` is newer than ``backup`` (negative when older)."""
    train = sorted(set(KNOWN_RELEASES) | {backup.release_key, target.release_key})
    return train.index(target.release_key) - train.index(backup.release_key)


def check_restore_allowed(backup_version: str, target_version: str) -> None:
    """Raise RefusedError (exit 3) when restoring into ``target_version`` is not supported.

    Allowed: the same release, or the next release. Refused: more than one release
    newer (the seeds' rule), or older than the backup (a newer control plane's state
    cannot be injected into an older deployment).
    """
    backup = parse_version(backup_version)
    target = parse_version(target_version)
    gap = release_gap(backup, target)
    if gap > 1:
        raise RefusedError(
            f"Restore refused: the target version {target_version} is {gap} releases newer "
            f"than the backup's stamp version {backup_version}; restore is supported only "
            "into the same release or the next one. Redeploy at a version at most one "
            "release newer, restore, then update."
        )
    if gap < 0:
        raise RefusedError(
            f"Restore refused: the target version {target_version} is older than the "
            f"backup's stamp version {backup_version}; redeploy at {backup_version} or the "
            "next release."
        )
