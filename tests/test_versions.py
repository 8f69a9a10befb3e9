"""The restore version rule: same release or the next one, nothing else."""

from __future__ import annotations

import pytest

from infrabackup.errors import ConfigError, RefusedError
from infrabackup.versions import check_restore_allowed, parse_version, release_gap


@pytest.mark.parametrize(
    ("backup", "target", "gap"),
    [
        ("1.2408.1.50", "1.2408.9.1", 0),
        ("1.2408.1.50", "1.2501.0.1", 1),
        ("1.2406.0.1", "1.2501.0.1", 2),
        ("1.2501.0.1", "1.2408.0.1", -1),
        ("1.2501.0.1", "1.2511.0.1", 1),  # an unknown, newer release still orders
        ("1.2501.0.1", "1.2606.0.1", 1),  # no known release between them
        ("1.2408.0.1", "1.2606.0.1", 2),
        ("1.1811.0.1", "1.1901.0.1", 1),
    ],
)
def test_release_gap_counts_releases(backup: str, target: str, gap: int) -> None:
    assert release_gap(parse_version(backup), parse_version(target)) == gap


def test_allowed_and_refused() -> None:
    check_restore_allowed("1.2408.1.50", "1.2408.1.50")
    check_restore_allowed("1.2408.1.50", "1.2501.0.7")
    with pytest.raises(RefusedError, match=r"releases newer"):
        check_restore_allowed("1.2406.0.1", "1.2501.0.1")
    with pytest.raises(ConfigError, match=r"MAJOR\.RELEASE"):
        check_restore_allowed("1.2406.0.1", "v2")
