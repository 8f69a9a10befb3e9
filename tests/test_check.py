"""``infrabackup check``: what Test-AzureStack's share-accessibility test does, for real."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from infrabackup.settings import Settings
from tests.servers.samba import PASSWORD, SambaSet, free_port

REPO = Path(__file__).resolve().parents[1]
STAMP = {"BACKUP_EXTERNAL_DOMAIN": "contoso.com", "BACKUP_REGION": "nyc"}


def check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("BACKUP_")}
    proc = subprocess.run([sys.executable, "-m", "infrabackup", "check", "--json"], cwd=REPO,
                          env={**base, **STAMP, **env}, capture_output=True, text=True,
                          timeout=120, check=False)
    assert PASSWORD not in proc.stdout + proc.stderr
    return proc


def _env(settings: Settings) -> dict[str, str]:
    return {k: v for k, v in settings.given.items() if k.startswith("BACKUP_")}


def test_check_probes_a_local_folder_and_reports_capacity(tmp_path: Path) -> None:
    proc = check({"BACKUP_SHARE_PATH": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["steps"] == ["connected and authenticated", "wrote a probe file",
                               "read it back", "removed it"]
    assert 0 < report["freeBytes"] <= report["totalBytes"]
    # The probe is gone; only the stamp's region folder was made.
    assert [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")] == [
        "contoso.com", "contoso.com/nyc"]


def test_check_probes_a_real_smb_share(samba: SambaSet) -> None:
    proc = check(_env(samba.settings("plain")))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["share"] == "\\\\127.0.0.1\\plain"
    assert report["freeBytes"] > 0
    probes = list(samba.share_dir("plain").rglob(".infrabackup-probe-*"))
    assert probes == []


def test_check_names_the_alert_and_remediation_when_it_fails(samba: SambaSet) -> None:
    cases = {
        "Backup failed due to authentication issue": samba.settings("plain",
                                                                    password="not-it-1"),
        "Backup failed due to a fault in the path": samba.settings("no-such-share"),
        "Backup failed due to connectivity problems": samba.settings("plain",
                                                                     port=free_port()),
    }
    for alert, settings in cases.items():
        proc = check(_env(settings))
        assert proc.returncode == 1
        assert f"alert: {alert}" in proc.stderr
        assert "remediation: " in proc.stderr
        assert json.loads(proc.stdout)["error"]["alert"] == alert


def test_check_warns_when_backup_schedule_is_unset(tmp_path: Path) -> None:
    # The Functions host resolves %BACKUP_SCHEDULE% itself: without the setting the timer
    # does not start (tests/test_worker_host_startup.py), whatever the app's default.
    unset = check({"BACKUP_SHARE_PATH": str(tmp_path)})
    assert unset.returncode == 0, unset.stderr
    [warning] = json.loads(unset.stdout)["warnings"]
    assert "BACKUP_SCHEDULE is not set" in warning and "timer" in warning
    assert f"warning: {warning}" in unset.stderr

    set_ = check({"BACKUP_SHARE_PATH": str(tmp_path), "BACKUP_SCHEDULE": "0 0 */6 * * *"})
    assert set_.returncode == 0, set_.stderr
    assert json.loads(set_.stdout)["warnings"] == [] and "warning:" not in set_.stderr
