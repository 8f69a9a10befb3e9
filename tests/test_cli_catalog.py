"""The command line over a damaged share, run as a process: a malformed manifest is one
clear error for that backup and nothing else."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

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
