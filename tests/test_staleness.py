"""BACKUP_STALE_AFTER_HOURS: derived from the schedule, validated, and shown by ``check``.

Given a schedule, the threshold of "No successful backup" is twice the longest gap
between two scheduled runs plus one hour, at most 48 hours (the longest look-back of an
alert rule); set by hand it must be whole hours 1-48 and longer than the longest gap plus
an hour, else the run stops before anything is written with one message naming the
setting and giving an example. ``infrabackup check`` shows the stamp's freshness.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from infrabackup.alerts import NO_SUCCESSFUL_BACKUP
from infrabackup.errors import ConfigError
from infrabackup.settings import load_settings
from infrabackup.staleness import freshness, longest_gap, threshold
from tests.helpers import Keys, make_keys, make_stamp, write_random

REPO = Path(__file__).resolve().parents[1]
H = dt.timedelta(hours=1)


@pytest.mark.parametrize(("schedule", "gap", "hours"), [
    ("0 0 */12 * * *", 12 * H, 25),       # the default
    ("0 0 */4 * * *", 4 * H, 9),           # the brief's most frequent
    ("0 30 2,14 * * *", 12 * H, 25),
    ("0 0 1,9,13 * * *", 12 * H, 25),      # uneven: the longest gap decides (13:00 -> 1:00)
    ("0 */90 * * * *", H, 3),              # minute 0 only (a step past 59): hourly
    ("0 0 0 * * *", 24 * H, 48),           # daily: 49 h is capped at the 48 h look-back
    ("0 0 0 * * 1-5", 72 * H, 48),         # weekdays: Friday to Monday
])
def test_the_threshold_is_twice_the_longest_gap_plus_an_hour(
    schedule: str, gap: dt.timedelta, hours: int,
) -> None:
    assert longest_gap(schedule) == gap
    settings = load_settings({"BACKUP_SCHEDULE": schedule})
    assert settings.stale_after_hours is None
    limit = threshold(settings)
    assert (limit.hours, limit.source) == (hours, "derived from BACKUP_SCHEDULE")
    # A schedule with gaps beyond what the rule can watch is said so, not refused.
    assert (limit.warning is not None) == (gap + H > 48 * H)


def test_a_schedule_that_never_fires_has_no_gap() -> None:
    assert longest_gap("0 0 0 30 2 *") is None
    assert threshold(load_settings({"BACKUP_SCHEDULE": "0 0 0 30 2 *"})).hours == 25


@pytest.mark.parametrize(("value", "schedule", "needle"), [
    ("twelve", "0 0 */12 * * *", "'twelve' is not a whole number (ASCII digits 0-9). Example: 25."),
    ("0", "0 0 */12 * * *", "0 is outside 1-48. Example: 25."),
    ("49", "0 0 */12 * * *", "49 is outside 1-48. Example: 25."),
    ("12.5", "0 0 */12 * * *", "is not a whole number"),
    ("12", "0 0 */12 * * *", "shorter than the longest gap between scheduled runs (12 h) plus "
                             "an hour"),
    ("4", "0 0 */4 * * *", "use at least 5. Example: 9."),
    ("48", "0 0 0 * * 1-5", "leaves up to 72 h between runs"),
])
def test_a_bad_threshold_stops_the_run_naming_the_setting(
    value: str, schedule: str, needle: str,
) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"BACKUP_STALE_AFTER_HOURS": value, "BACKUP_SCHEDULE": schedule})
    assert info.value.message.startswith("BACKUP_STALE_AFTER_HOURS: ")
    assert needle in info.value.message
    assert "Example: " in info.value.message
    assert info.value.setting == "BACKUP_STALE_AFTER_HOURS"


def test_a_threshold_set_by_hand_wins() -> None:
    settings = load_settings({"BACKUP_STALE_AFTER_HOURS": "13"})
    assert settings.stale_after_hours == 13
    assert (threshold(settings).hours, threshold(settings).source) == (
        13, "BACKUP_STALE_AFTER_HOURS")
    assert settings.masked()["BACKUP_STALE_AFTER_HOURS"] == "13"


def test_freshness_is_stale_without_a_success_or_past_the_threshold() -> None:
    settings = load_settings({})
    now = dt.datetime(2026, 3, 2, 12, tzinfo=dt.UTC)
    never = freshness(settings, None, now)
    assert never["stale"] is True and never["staleAtUtc"] is None
    assert never["alert"] == NO_SUCCESSFUL_BACKUP.to_dict()
    fresh = freshness(settings, now - 24 * H, now)
    assert fresh["stale"] is False and fresh["staleAtUtc"] == (now + H).isoformat()
    assert freshness(settings, now - 25 * H, now)["stale"] is True


def _check(env: dict[str, str], as_json: bool = False) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("BACKUP_")}
    return subprocess.run([sys.executable, "-m", "infrabackup", "check", *(["--json"] * as_json)],
                          cwd=REPO, env={**base, **env}, capture_output=True, text=True,
                          timeout=120, check=False)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return make_keys(tmp_path_factory.mktemp("staleness-keys"), "staleness")


def test_check_shows_the_stamps_freshness(tmp_path: Path, keys: Keys) -> None:
    stamp = make_stamp(tmp_path, keys)
    write_random(stamp.source_dir("ACS") / "a.bin", 4096)

    empty = _check(stamp.env, as_json=True)
    assert empty.returncode == 0, empty.stderr  # check is about the share: still exit 0
    report = json.loads(empty.stdout)["freshness"]
    assert (report["stale"], report["staleAfterHours"]) == (True, 25)
    assert report["lastSuccessfulBackupUtc"] is None
    assert report["alert"]["name"] == NO_SUCCESSFUL_BACKUP.title
    text = _check(stamp.env)
    assert "Newest successful backup: none." in text.stdout
    assert f"warning: {NO_SUCCESSFUL_BACKUP.title}: " in text.stdout
    assert f"remediation: {NO_SUCCESSFUL_BACKUP.remediation}" in text.stdout

    manifest = stamp.backup()
    done = json.loads(_check({**stamp.env, "BACKUP_STALE_AFTER_HOURS": "13"},
                             as_json=True).stdout)["freshness"]
    assert done["stale"] is False
    assert done["lastSuccessfulBackupUtc"] == manifest.completed.isoformat()
    assert (done["staleAfterHours"], done["staleAfterSource"]) == (13, "BACKUP_STALE_AFTER_HOURS")
    assert dt.datetime.fromisoformat(done["staleAtUtc"]) == manifest.completed + 13 * H
    text = _check({**stamp.env, "BACKUP_STALE_AFTER_HOURS": "13"}).stdout
    assert f"'{NO_SUCCESSFUL_BACKUP.title}' fires after 13 h" in text
    assert "warning:" not in text
