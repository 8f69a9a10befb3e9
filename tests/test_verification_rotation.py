"""The rotating sample of scheduled verification: simulated months of daily runs.

Given backups made every 12 hours, retention deleting them after BACKUP_RETENTION_DAYS
(some kept much longer, as retention keeps the newest copy of a component), and one
verification run a day (some days missed), when each run reads in full what
:func:`infrabackup.verification.choose_full_reads` picks, then every retained backup is
re-read in full at least once per retention period, hour by hour, while a run reads only
about a period's share of the backups once the rotation has settled.
"""

from __future__ import annotations

import datetime as dt
import math
import uuid

import pytest

from infrabackup.verification import DUE_MARGIN, RotationState, choose_full_reads

H = dt.timedelta(hours=1)
DAY = dt.timedelta(days=1)
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def simulate(retention_days: int, days: int, long_kept: int, missed_every: int
             ) -> tuple[int, list[int], int]:
    """Run the rotation; return (worst gap in hours between reads of a retained backup,
    the number of full reads of each run, the number of retained backups at the end)."""
    period = dt.timedelta(days=retention_days)
    state = RotationState()
    created: dict[str, dt.datetime] = {}
    kept_forever: set[str] = set()
    reads: dict[str, list[dt.datetime]] = {}
    per_run: list[int] = []
    worst = dt.timedelta(0)
    now = T0
    day = 0
    while now < T0 + days * DAY:
        now += H
        if now.hour in (0, 12):  # a backup
            backup_id = str(uuid.uuid4())
            created[backup_id] = now
            if len(kept_forever) < long_kept:
                kept_forever.add(backup_id)
        # retention: older than the period goes, except what it keeps for longer
        for backup_id in [b for b, c in created.items()
                          if now - c > period and b not in kept_forever]:
            del created[backup_id]
            state.keep_only(set(created))
        if now.hour == 3:  # the daily verification at 03:00
            day += 1
            if missed_every and day % missed_every == 0:
                continue  # the app was down that night
            chosen = choose_full_reads(list(created.items()), state, now, retention_days)
            assert len(set(chosen)) == len(chosen)
            for backup_id in chosen:
                state.last_full[backup_id] = now
                reads.setdefault(backup_id, []).append(now)
            per_run.append(len(chosen))
        # the property, every hour: no retained backup is a period past its last full
        # read (or, never read yet, past its creation)
        for backup_id, made in created.items():
            last = reads[backup_id][-1] if backup_id in reads else made
            worst = max(worst, now - last)
    return int(worst / H), per_run, len(created)


@pytest.mark.parametrize("retention_days", [2, 3, 7, 14])
@pytest.mark.parametrize("missed_every", [0, 9])
def test_every_retained_backup_is_read_in_full_once_per_retention_period(
        retention_days: int, missed_every: int) -> None:
    worst_hours, _, _ = simulate(retention_days, days=120, long_kept=30,
                                 missed_every=missed_every)
    assert worst_hours <= retention_days * 24, (
        f"a retained backup went {worst_hours} h without a full read "
        f"(retention {retention_days} days)")


@pytest.mark.parametrize("retention_days", [7, 14])
def test_a_run_reads_only_about_a_periods_share_once_settled(retention_days: int) -> None:
    worst_hours, per_run, retained = simulate(retention_days, days=120, long_kept=30,
                                              missed_every=0)
    assert worst_hours <= retention_days * 24
    settled = per_run[3 * retention_days:]
    budget = math.ceil(retained / (retention_days - DUE_MARGIN.days))
    # Two new backups a day are read on top of the spread re-reads.
    assert max(settled) <= budget + 2 + 1, (max(settled), budget, retained)
    assert sum(settled) / len(settled) < retained / 2, "a sample, not everything, each run"


def test_corrupted_and_never_read_backups_come_first() -> None:
    old, new, bad = (str(uuid.uuid4()) for _ in range(3))
    now = T0 + 10 * DAY
    state = RotationState({old: now - DAY, bad: now - DAY}, {bad})
    chosen = choose_full_reads([(old, T0), (bad, T0 + DAY), (new, now - H)], state, now, 7)
    assert chosen[:2] == [bad, new]


def test_the_state_survives_a_round_trip_and_unreadable_state_starts_afresh() -> None:
    state = RotationState({"a": T0}, {"a"})
    assert RotationState.from_json(state.to_json()) == state
    assert RotationState.from_json("{not json") == RotationState()
    assert RotationState.from_json('{"lastFull": {"a": "yesterday"}}') == RotationState()
