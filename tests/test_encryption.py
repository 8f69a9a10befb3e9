"""The stream format detects every flipped byte, truncation, reordering and swap."""

from __future__ import annotations

import os

import pytest

from infrabackup.errors import IntegrityError
from infrabackup.manifest import canonical_json, check_manifest_mac, manifest_mac
from infrabackup.stream.encryption import (
    HEADER_BYTES,
    TAG_BYTES,
    decrypt_stream,
    encrypt_stream,
    new_data_key,
)

SEG = 4096


def _encrypt(data: bytes, key: bytes, name: str = "ACS", **kw: int) -> bytes:
    pieces = [data[i : i + 1000] for i in range(0, len(data), 1000)] or [b""]
    return b"".join(encrypt_stream(pieces, key, name, segment_size=SEG, **kw))


def _decrypt(blob: bytes, key: bytes, name: str = "ACS") -> bytes:
    return b"".join(decrypt_stream([blob[i : i + 777] for i in range(0, len(blob), 777)],
                                   key, name))


@pytest.mark.parametrize("size", [0, 1, SEG - 1, SEG, SEG + 1, 3 * SEG, 3 * SEG + 17])
def test_round_trip_at_every_boundary(size: int) -> None:
    key = new_data_key()
    data = os.urandom(size)
    assert _decrypt(_encrypt(data, key), key) == data


def test_every_single_byte_flip_is_detected() -> None:
    key = new_data_key()
    blob = _encrypt(os.urandom(2 * SEG + 100), key)
    for position in range(len(blob)):
        tampered = bytearray(blob)
        tampered[position] ^= 0x01
        with pytest.raises(IntegrityError):
            _decrypt(bytes(tampered), key)


@pytest.mark.parametrize("size", [0, SEG, 2 * SEG + 5])
def test_every_truncation_is_detected(size: int) -> None:
    key = new_data_key()
    blob = _encrypt(os.urandom(size), key)
    for cut in range(len(blob)):
        with pytest.raises(IntegrityError):
            _decrypt(blob[:cut], key)


def test_trailing_data_is_detected() -> None:
    key = new_data_key()
    blob = _encrypt(os.urandom(SEG + 10), key)
    with pytest.raises(IntegrityError):
        _decrypt(blob + b"\0", key)
    with pytest.raises(IntegrityError):
        _decrypt(blob + blob[HEADER_BYTES:], key)


def test_swapped_and_dropped_segments_are_detected() -> None:
    key = new_data_key()
    blob = _encrypt(os.urandom(3 * SEG + 10), key)
    rec = SEG + TAG_BYTES
    header, body = blob[:HEADER_BYTES], blob[HEADER_BYTES:]
    segs = [body[i : i + rec] for i in range(0, len(body), rec)]
    assert len(segs) == 4
    swapped = header + segs[1] + segs[0] + segs[2] + segs[3]
    dropped = header + segs[0] + segs[2] + segs[3]
    last_dropped = header + b"".join(segs[:3])
    for bad in (swapped, dropped, last_dropped):
        with pytest.raises(IntegrityError):
            _decrypt(bad, key)


def test_a_stream_moved_to_another_component_or_key_fails() -> None:
    key = new_data_key()
    blob = _encrypt(b"state", key, "ACS")
    with pytest.raises(IntegrityError, match="CRP"):
        _decrypt(blob, key, "CRP")
    with pytest.raises(IntegrityError):
        _decrypt(blob, new_data_key(), "ACS")


def test_zstd_compression_round_trips_and_shrinks_text() -> None:
    key = new_data_key()
    data = b"hostname tor1\nvlan 7\n" * 5000
    blob = _encrypt(data, key, compression=1)
    assert len(blob) < len(data) / 10
    assert _decrypt(blob, key) == data


def test_manifest_mac_detects_any_change() -> None:
    key = new_data_key()
    body = {"backupId": "x", "components": [{"name": "ACS", "sha256": "ab"}]}
    manifest = {**body, "mac": manifest_mac(key, body)}
    check_manifest_mac(key, manifest)
    changed = {**manifest, "components": [{"name": "ACS", "sha256": "ac"}]}
    with pytest.raises(IntegrityError):
        check_manifest_mac(key, changed)
    with pytest.raises(IntegrityError):
        check_manifest_mac(new_data_key(), manifest)
    assert canonical_json({"b": 1, "a": "é"}) == '{"a":"é","b":1}'.encode()
