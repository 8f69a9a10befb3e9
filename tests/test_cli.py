"""The infrabackup command, run as a process: exit codes, --json, stderr, nothing lost."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import Keys, Stamp, make_keys, make_stamp, write_random

REPO = Path(__file__).resolve().parents[1]
SHARE_PASSWORD = "Sh4re-Pa55word-XYZZY"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return make_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture
def stamp(tmp_path: Path, keys: Keys) -> Stamp:
    s = make_stamp(tmp_path, keys, [("ACS", "backup"), ("HLH", "region")])
    write_random(s.source_dir("ACS") / "db.bin", 2 * 1024 * 1024)
    (s.source_dir("HLH") / "bmc.json").write_text('{"bmc": "192.0.2.10"}')
    s.env["BACKUP_SHARE_PASSWORD"] = SHARE_PASSWORD
    return s


def run(args: list[str], env: dict[str, str] | None = None, *, fsize: int | None = None,
        ) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("BACKUP_")}

    def limit() -> None:  # a real "disk full" for this process: files may not grow past fsize
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))  # type: ignore[arg-type]

    proc = subprocess.run(
        [sys.executable, "-m", "infrabackup", *args], cwd=REPO, env={**base, **(env or {})},
        capture_output=True, text=True, timeout=300, preexec_fn=limit if fsize else None,
    )
    assert SHARE_PASSWORD not in proc.stdout + proc.stderr
    return proc


def run_json(args: list[str], env: dict[str, str], code: int = 0) -> Any:
    proc = run([*args, "--json"], env)
    assert proc.returncode == code, proc.stderr
    return json.loads(proc.stdout)


def test_no_settings_is_a_usage_error_naming_the_settings(tmp_path: Path) -> None:
    proc = run(["backup"], {})
    assert proc.returncode == 2
    assert "BACKUP_SHARE_PATH: not set" in proc.stderr
    assert "Example" in proc.stderr


def test_a_bad_setting_stops_before_anything_is_written(stamp: Stamp) -> None:
    proc = run(["backup"], {**stamp.env, "BACKUP_RETENTION_DAYS": "30"})
    assert proc.returncode == 2
    assert "BACKUP_RETENTION_DAYS: 30 is outside 2-14" in proc.stderr
    assert list(Path(stamp.env["BACKUP_SHARE_PATH"]).iterdir()) == []


def test_backup_list_show_verify_restore_with_json(stamp: Stamp, tmp_path: Path) -> None:
    out = run_json(["backup"], stamp.env)
    backup_id = out["backupId"]
    assert out["status"] == "Succeeded"
    listed = run_json(["list"], stamp.env)
    assert [b["backupId"] for b in listed["backups"]] == [backup_id]
    assert listed["backups"][0]["thumbprint"] == stamp.keys.cert.thumbprint
    shown = run_json(["show", backup_id], stamp.env)
    assert {c["name"] for c in shown["components"]} == {"ACS", "HLH"}
    verified = run_json(["verify", backup_id], stamp.env)
    assert verified["ok"] and verified["contentsChecked"]
    restored = run_json(["restore", backup_id, "--to", str(tmp_path / "r")], stamp.env)
    assert {c["name"] for c in restored["components"]} == {"ACS", "HLH"}
    assert (tmp_path / "r/ACS/db.bin").read_bytes() == (
        stamp.source_dir("ACS") / "db.bin").read_bytes()


def test_verify_exits_1_naming_the_tampered_component(stamp: Stamp) -> None:
    backup_id = run_json(["backup"], stamp.env)["backupId"]
    (victim,) = Path(stamp.env["BACKUP_SHARE_PATH"]).rglob("ACS.bin")
    data = bytearray(victim.read_bytes())
    data[-100] ^= 1
    victim.write_bytes(bytes(data))
    proc = run(["verify", backup_id], stamp.env)
    assert proc.returncode == 1
    assert "ACS" in proc.stderr and "HLH" not in proc.stderr.split("verification:")[1]


def test_unknown_and_malformed_ids(stamp: Stamp) -> None:
    assert run(["show", "not-a-guid"], stamp.env).returncode == 2
    proc = run(["show", "5d1f0e9a-0000-4000-8000-000000000000"], stamp.env)
    assert proc.returncode == 1 and "No backup" in proc.stderr


def test_maintenance_window_refuses_backups_with_exit_3(stamp: Stamp) -> None:
    assert run_json(["maintenance", "start", "--operation", "fru"], stamp.env)["open"]
    assert run_json(["maintenance", "status"], stamp.env)["operation"] == "fru"
    proc = run(["backup"], stamp.env)
    assert proc.returncode == 3 and "maintenance window (fru)" in proc.stderr
    assert run_json(["maintenance", "end"], stamp.env)["open"] is False
    assert run(["backup"], stamp.env).returncode == 0


def test_a_running_backup_refuses_another_with_exit_3(stamp: Stamp) -> None:
    with stamp.share.lock(stamp.layout.lock, "backup 1111"):
        proc = run(["backup"], stamp.env)
    assert proc.returncode == 3
    assert "backup 1111" in proc.stderr and "since" in proc.stderr


def test_version_gap_is_refused_with_exit_3(stamp: Stamp, tmp_path: Path) -> None:
    backup_id = run_json(["backup"], stamp.env)["backupId"]
    proc = run(["restore", backup_id, "--to", str(tmp_path / "r"),
                "--target-version", "1.2606.0.1"], {**stamp.env})
    assert proc.returncode == 3 and "releases newer" in proc.stderr
    assert not (tmp_path / "r").exists()


def test_a_full_disk_fails_with_the_capacity_alert_and_loses_nothing(
    stamp: Stamp, tmp_path: Path
) -> None:
    good = run_json(["backup"], stamp.env)["backupId"]
    write_random(stamp.source_dir("ACS") / "bigger.bin", 8 * 1024 * 1024, seed=3)
    proc = run(["backup"], stamp.env, fsize=4 * 1024 * 1024)
    assert proc.returncode == 1
    assert "alert: Backup failed because the file share is out of capacity" in proc.stderr
    assert "remediation: Add more storage capacity" in proc.stderr
    share = Path(stamp.env["BACKUP_SHARE_PATH"])
    assert len(list(share.rglob("manifest.json"))) == 1
    assert [p for p in share.rglob("*") if ".partial-" in p.name] == []
    listed = run_json(["list"], stamp.env)
    assert [b["backupId"] for b in listed["backups"]] == [good] and listed["incomplete"] == []
    assert run_json(["verify", good], stamp.env)["ok"]
    run_json(["restore", good, "--to", str(tmp_path / "r")], stamp.env)
    # Once the fault is gone, the next backup succeeds with no manual clean-up.
    assert run_json(["backup"], stamp.env)["status"] == "Succeeded"


def test_prune_dry_run_lists_paths_to_delete(stamp: Stamp) -> None:
    out = run_json(["prune", "--dry-run"], stamp.env)
    assert out["pathsToDelete"] == [] and out["dryRun"] is True


def test_keygen_writes_cer_and_private_pfx_and_never_prints_the_password(
    tmp_path: Path
) -> None:
    pw = tmp_path / "pw"
    pw.write_text("Keygen-Pfx-Passw0rd\n")
    out = run_json(["keygen", "--out", str(tmp_path / "k"), "--name", "prod",
                    "--password-file", str(pw)], {})
    assert Path(out["certificate"]).is_file() and Path(out["pfx"]).is_file()
    assert Path(out["pfx"]).stat().st_mode & 0o077 == 0
    assert len(out["thumbprint"]) == 40
    again = run(["keygen", "--out", str(tmp_path / "k"), "--name", "prod",
                 "--password-file", str(pw)])
    assert again.returncode == 2 and "already exist" in again.stderr
    legacy = run_json(["keygen", "--out", str(tmp_path / "k"), "--legacy-key"], {})
    assert len(Path(legacy["keyFile"]).read_text().strip()) == 44
    no_pw = run(["keygen", "--out", str(tmp_path / "k2")])
    assert no_pw.returncode == 2 and "--password-file" in no_pw.stderr


def test_demo_runs_the_main_job_and_restores_identical_files(tmp_path: Path) -> None:
    out = run_json(["demo", "--dir", str(tmp_path / "demo")], {})
    assert out["status"] == "Succeeded" and out["verified"] and out["identical"]
    settings = out["settingsFile"]
    listed = run_json(["--settings", settings, "list"], {})
    assert listed["backups"][0]["backupId"] == out["backupId"]
