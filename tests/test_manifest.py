"""Unit tests of manifest.py: a sealed manifest.json parses back to the same backup, its
MAC detects any changed byte of the content, and a missing or wrong field is refused with
one IntegrityError naming the file and the field.

No share: bytes in, bytes out (the property tests over a real share are
test_manifest_properties.py).
"""

from __future__ import annotations

import datetime as dt
import json
import os

import pytest

from infrabackup.errors import IntegrityError
from infrabackup.layout import StampLayout
from infrabackup.manifest import ComponentRecord, Manifest, check_manifest_mac

KEY = bytes(range(32))
WHERE = "contoso.com/east/MASBackup/20260102T030405Z/x/manifest.json"
ID = "3f2b8c1e-4d5a-4b6c-9e7f-0a1b2c3d4e5f"
TS = "20260102T030405Z"
CREATED = dt.datetime(2026, 1, 2, 3, 4, 5, 250_000, tzinfo=dt.UTC)


def _manifest() -> Manifest:
    layout = StampLayout("contoso.com", "east", "su1")
    return Manifest(
        backup_id=ID, timestamp=TS, status="PartialSucceeded", created=CREATED,
        completed=CREATED + dt.timedelta(seconds=42.5),
        stamp={"externalDomain": "contoso.com", "region": "east", "scaleUnit": "su1",
               "version": "1.2.3"},
        encryption={"mode": "certificate", "wrappedKey": "d3JhcHBlZA==",
                    "thumbprint": "AB" * 20},
        stream={"format": 2, "segmentSize": 1024 * 1024, "compression": "zstd"},
        components=[
            ComponentRecord("ACS", "backup", "directory", "Succeeded",
                            file=layout.component_file(TS, ID, "ACS", "backup"),
                            plaintext_bytes=100, ciphertext_bytes=160, blake3="ab" * 32,
                            files=3, folders=1, duration_seconds=1.5,
                            changed=["a.txt"], skipped=["caf\udce9"]),
            ComponentRecord("OEM", "region", "smb", "Succeeded",
                            file=layout.component_file(TS, ID, "OEM", "region"),
                            plaintext_bytes=10, ciphertext_bytes=70, blake3="cd" * 32),
            ComponentRecord("KV", "backup", "blob", "Failed", message="source unreachable"),
        ],
        warnings=["component KV failed"],
    )


def _sealed() -> bytes:
    return _manifest().seal(KEY)


def test_sealed_manifest_parses_back_to_the_same_backup() -> None:
    original = _manifest()
    raw = original.seal(KEY)
    parsed = Manifest.parse(raw, WHERE)
    assert parsed.to_dict() == original.to_dict()
    assert parsed.created == CREATED and parsed.duration_seconds == 42.5
    assert parsed.size_bytes == 230
    assert parsed.thumbprint == "AB" * 20
    assert parsed.digest_name == "blake3"
    acs = parsed.component("acs")
    assert acs is not None and parsed.expected_digest(acs) == "ab" * 32
    assert acs.skipped == ["caf\udce9"]  # a non-UTF-8 name survives the JSON
    check_manifest_mac(KEY, parsed.raw)


def test_the_mac_detects_a_changed_byte_of_any_value() -> None:
    raw = _sealed()
    text = raw.decode("utf-8", "surrogateescape")
    # The same length, still a valid manifest: only the MAC can tell.
    changed = text.replace('"plaintextBytes": 100', '"plaintextBytes": 101', 1)
    assert changed != text
    parsed = Manifest.parse(changed.encode("utf-8", "surrogateescape"), WHERE)
    with pytest.raises(IntegrityError, match="failed authentication"):
        check_manifest_mac(KEY, parsed.raw)


@pytest.mark.parametrize("path", [("status",), ("warnings", 0), ("stamp", "version"),
                                  ("components", 0, "files"), ("encryption", "wrappedKey")])
def test_the_mac_detects_each_field_changed(path: tuple[str | int, ...]) -> None:
    data = json.loads(_sealed())
    target = data
    for step in path[:-1]:
        target = target[step]
    value = target[path[-1]]
    target[path[-1]] = value + 1 if isinstance(value, int) else (
        "Succeeded" if value == "PartialSucceeded" else value + "x")
    if path == ("status",):  # status must match the components to parse: check raw MAC
        with pytest.raises(IntegrityError, match="failed authentication"):
            check_manifest_mac(KEY, data)
        return
    parsed = Manifest.parse(json.dumps(data).encode(), WHERE)
    with pytest.raises(IntegrityError, match="failed authentication"):
        check_manifest_mac(KEY, parsed.raw)


def test_another_data_key_fails_the_mac() -> None:
    parsed = Manifest.parse(_sealed(), WHERE)
    with pytest.raises(IntegrityError, match="failed authentication"):
        check_manifest_mac(os.urandom(32), parsed.raw)


def test_a_removed_mac_fails_authentication() -> None:
    data = json.loads(_sealed())
    del data["mac"]
    parsed = Manifest.parse(json.dumps(data).encode(), WHERE)
    with pytest.raises(IntegrityError, match="failed authentication"):
        check_manifest_mac(KEY, parsed.raw)


@pytest.mark.parametrize("path, named", [
    (("backupId",), "backupId"),
    (("timestamp",), "timestamp"),
    (("createdUtc",), "createdUtc"),
    (("stamp", "region"), "stamp.region"),
    (("encryption", "mode"), "encryption.mode"),
    (("components",), "components"),
    (("components", 0, "status"), "component ACS: status"),
])
def test_a_missing_field_is_refused_naming_the_file_and_the_field(
        path: tuple[str | int, ...], named: str) -> None:
    data = json.loads(_sealed())
    target = data
    for step in path[:-1]:
        target = target[step]
    del target[path[-1]]
    with pytest.raises(IntegrityError) as caught:
        Manifest.parse(json.dumps(data).encode(), WHERE)
    message = str(caught.value)
    assert message.startswith(f"{WHERE} is not a valid manifest: ")
    assert named in message
    assert message.endswith("the backup cannot be used.")


def test_a_component_file_not_where_the_layout_puts_it_is_refused() -> None:
    data = json.loads(_sealed())
    data["components"][0]["file"] = "contoso.com/east/elsewhere.bin"
    with pytest.raises(IntegrityError, match="is not where the component must be"):
        Manifest.parse(json.dumps(data).encode(), WHERE)


def test_an_unsupported_format_is_refused() -> None:
    data = json.loads(_sealed())
    data["format"] = 2
    with pytest.raises(IntegrityError, match="manifest format 2 is not supported"):
        Manifest.parse(json.dumps(data).encode(), WHERE)


@pytest.mark.parametrize("raw", [b"", b"{", b"[]", b"\xff\xfe", b'{"format": 1}'])
def test_bytes_that_are_not_a_manifest_are_refused(raw: bytes) -> None:
    with pytest.raises(IntegrityError, match=WHERE):
        Manifest.parse(raw, WHERE)
