"""The command line over a damaged share, run as a process: a malformed manifest is one
clear error for that backup and nothing else, and a manifest edited to name another key
mode cannot make ``verify`` skip authentication."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from infrabackup.keys.wrap import generate_legacy_key, legacy_key_id
from tests.helpers import Keys, Stamp, make_keys, make_stamp
from tests.test_catalog import _folder, _set, manifest_path
from tests.test_cli import run, run_json


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return make_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture
def stamp(tmp_path: Path, keys: Keys) -> Stamp:
    s = make_stamp(tmp_path, keys, [("ACS", "backup"), ("HLH", "region")])
    (s.source_dir("ACS") / "db.bin").write_bytes(bytes(range(256)) * 400)
    (s.source_dir("HLH") / "bmc.json").write_text('{"bmc": "192.0.2.10"}')
    return s


def _no_traceback(proc: Any) -> None:
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout


@pytest.mark.parametrize("damage", [
    _set("createdUtc", value="2026-11-20T12:00:00"),
    _folder,
    _set("components", 0, "name", value=12),
], ids=["naive createdUtc", "manifest.json is a folder", "non-string name"])
def test_one_malformed_manifest_breaks_no_command_on_the_others(
    stamp: Stamp, tmp_path: Path, damage: Callable[[Path], None]
) -> None:
    good = stamp.backup()
    bad = stamp.backup()
    damage(manifest_path(stamp, bad))

    listed = run_json(["list"], stamp.env)
    assert [b["backupId"] for b in listed["backups"]] == [good.backup_id]
    [item] = listed["incomplete"]
    assert item["backupId"] == bad.backup_id and item["status"] == "Unreadable"
    text = run(["list"], stamp.env)
    assert text.returncode == 0 and f"{bad.backup_id}  Unreadable" in text.stdout

    for command in ("show", "verify"):
        proc = run([command, bad.backup_id], stamp.env)
        assert proc.returncode == 1, proc.stderr
        _no_traceback(proc)
        [error] = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert bad.backup_id in error and "cannot be used" in error

    assert run_json(["show", good.backup_id], stamp.env)["backupId"] == good.backup_id
    assert run_json(["verify", good.backup_id], stamp.env)["ok"]
    restored = run_json(["restore", good.backup_id, "--to", str(tmp_path / "r")], stamp.env)
    assert {c["name"] for c in restored["components"]} == {"ACS", "HLH"}
    pruned = run_json(["prune"], stamp.env)
    assert pruned["backups"] == [] and pruned["kept"] == 1


def _downgrade(stamp: Stamp, *, key_id: str | None) -> str:
    """A certificate backup with a flipped byte in ACS.bin, its digest updated, and the
    manifest's encryption.mode changed to legacyKey (with a plausible keyId if given)."""
    made = stamp.backup()
    share = Path(stamp.env["BACKUP_SHARE_PATH"])
    victim = share / made.component("ACS").file  # type: ignore[operator,union-attr]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    path = manifest_path(stamp, made)
    manifest = json.loads(path.read_text())
    [acs] = [c for c in manifest["components"] if c["name"] == "ACS"]
    acs["sha256"] = hashlib.sha256(bytes(data)).hexdigest()
    manifest["encryption"]["mode"] = "legacyKey"
    if key_id is not None:
        manifest["encryption"]["keyId"] = key_id
    path.write_text(json.dumps(manifest))
    return made.backup_id


@pytest.mark.parametrize("key_id", [None, "0123456789ABCDEF"], ids=["mode only", "with keyId"])
def test_verify_with_the_pfx_fails_on_a_manifest_downgraded_to_legacy_key_mode(
    stamp: Stamp, key_id: str | None
) -> None:
    backup_id = _downgrade(stamp, key_id=key_id)
    proc = run(["verify", backup_id], stamp.env)
    assert proc.returncode == 1, proc.stdout
    _no_traceback(proc)
    if key_id is None:
        assert "encryption.keyId is missing" in proc.stderr  # not even a valid manifest
    else:
        # What the backup asks for, and what is configured.
        assert "legacy key 0123456789ABCDEF (encryption mode legacyKey)" in proc.stderr
        assert f"the PFX {stamp.keys.cert.thumbprint} (BACKUP_DECRYPTION_CERT)" in proc.stderr


def test_a_legacy_key_alone_checks_certificate_backups_by_digest_and_says_so(
    stamp: Stamp
) -> None:
    """The legacy key is also an encryption setting of hosts without the PFX: there a
    certificate backup is checked by digest (exit 0), and the output says so."""
    made = stamp.backup()
    env = {k: v for k, v in stamp.env.items() if not k.startswith("BACKUP_DECRYPTION")}
    env["BACKUP_ENCRYPTION_KEY"] = generate_legacy_key()
    out = run_json(["verify", made.backup_id], env)
    assert out["ok"] and out["contentsChecked"] is False
    text = run(["verify", made.backup_id], env).stdout
    assert "Digests only" in text and "certificate mode" in text


def test_a_legacy_backup_with_the_wrong_legacy_key_fails_verify(stamp: Stamp) -> None:
    key, other = generate_legacy_key(), generate_legacy_key()
    env = {**stamp.env, "BACKUP_ENCRYPTION_KEY": key}
    del env["BACKUP_ENCRYPTION_CERT"]
    backup_id = run_json(["backup"], env)["backupId"]
    assert run_json(["verify", backup_id], env)["contentsChecked"]
    proc = run(["verify", backup_id], {**env, "BACKUP_ENCRYPTION_KEY": other})
    assert proc.returncode == 1
    assert _key_id(key) in proc.stderr and _key_id(other) in proc.stderr


def _key_id(key: str) -> str:
    return legacy_key_id(base64.b64decode(key))
