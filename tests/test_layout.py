"""Unit tests of layout.py: where a stamp's things live on the share, timestamps and ids.

The paths are the on-share format (docs/FORMAT.md): a change here is a format change.
"""

from __future__ import annotations

import datetime as dt

import pytest

from infrabackup.errors import ConfigError, PathError
from infrabackup.layout import (
    StampLayout,
    backup_id_or_none,
    format_timestamp,
    parse_backup_id,
    parse_timestamp,
)

TS = "20260102T030405Z"
ID = "3f2b8c1e-4d5a-4b6c-9e7f-0a1b2c3d4e5f"


def test_stamp_paths_of_domain_and_region() -> None:
    layout = StampLayout("contoso.com", "east")
    assert layout.region_root == "contoso.com/east"
    assert layout.masbackup == "contoso.com/east/MASBackup"
    assert layout.lock == "contoso.com/east/infrabackup.lock"
    assert layout.backup_dir(TS, ID) == f"contoso.com/east/MASBackup/{TS}/{ID}"
    assert layout.manifest(TS, ID) == f"contoso.com/east/MASBackup/{TS}/{ID}/manifest.json"


def test_the_lock_lives_beside_masbackup_not_inside_it() -> None:
    layout = StampLayout("contoso.com", "east")
    assert not layout.lock.startswith(layout.masbackup + "/")


def test_backup_scoped_component_is_in_the_backup_folder() -> None:
    layout = StampLayout("contoso.com", "east", "su1")
    assert (layout.component_file(TS, ID, "keyvault", "backup")
            == f"contoso.com/east/MASBackup/{TS}/{ID}/keyvault.bin")


def test_region_scoped_component_is_under_its_name_and_scale_unit() -> None:
    layout = StampLayout("contoso.com", "east", "su1")
    assert layout.region_component_dir("OEM") == "contoso.com/east/OEM/su1"
    assert (layout.component_file(TS, ID, "OEM", "region")
            == f"contoso.com/east/OEM/su1/{TS}/{ID}.bin")


def test_region_scoped_component_without_scale_unit() -> None:
    layout = StampLayout("contoso.com", "east")
    assert layout.region_component_dir("OEM") == "contoso.com/east/OEM"
    assert layout.component_file(TS, ID, "OEM", "region") == f"contoso.com/east/OEM/{TS}/{ID}.bin"


@pytest.mark.parametrize("domain, region", [
    ("..", "east"), ("contoso.com", ".."), ("contoso.com", "."),
    ("c:\\x", "east"), ("contoso.com", "ea\0st"), ("contoso.com", "a:b"),
])
def test_unsafe_domain_or_region_is_refused(domain: str, region: str) -> None:
    with pytest.raises(PathError):
        _ = StampLayout(domain, region).masbackup


def test_empty_domain_and_region_is_refused() -> None:
    with pytest.raises(PathError):
        _ = StampLayout("", "").region_root


@pytest.mark.parametrize("name", ["..", "a\\b", "c:d"])
def test_unsafe_component_name_is_refused(name: str) -> None:
    layout = StampLayout("contoso.com", "east")
    with pytest.raises(PathError):
        layout.component_file(TS, ID, name, "region")


def test_timestamp_round_trip_in_utc() -> None:
    when = dt.datetime(2026, 1, 2, 4, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    assert format_timestamp(when) == TS
    assert parse_timestamp(TS) == dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


@pytest.mark.parametrize("text", [
    "", "20260102T030405", "20260102T030405Z\n", "2026010２T030405Z",
    "x20260102T030405Z", "2026-01-02T03:04:05Z",
    "20261302T030405Z", "20260230T030405Z", "20260102T250405Z",  # no such date or time
])
def test_not_a_timestamp_is_none(text: str) -> None:
    assert parse_timestamp(text) is None


def test_backup_id_is_canonical() -> None:
    assert parse_backup_id("{" + ID.upper().replace("-", "") + "}") == ID
    assert backup_id_or_none(ID.upper()) == ID


@pytest.mark.parametrize("text", ["", "not-a-guid", ID[:-1], ID.replace("4", "_", 1),
                                  ID.replace("3", "٣", 1)])
def test_not_a_backup_id_is_refused_with_a_clear_error(text: str) -> None:
    with pytest.raises(ConfigError, match="is not a backup id"):
        parse_backup_id(text)
    assert backup_id_or_none(text) is None


def test_folder_scan_takes_only_a_bare_id_while_operator_input_may_be_padded() -> None:
    assert parse_backup_id(f" {ID}\n") == ID
    assert backup_id_or_none(f"{ID}\n") is None
    assert backup_id_or_none(f"{{{ID}}}") is None
