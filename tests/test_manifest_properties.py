"""Property tests: whatever a manifest.json holds, every reader ends in a valid backup or
that one backup listed Unreadable, never a traceback, and the others are untouched.

A real share holds three real backups (older, victim, newer). Each example rewrites only
the victim's manifest.json with a mutation of its valid JSON — a value replaced by any
JSON (huge and non-finite numbers, unicode with lone surrogates, objects, lists), a field
removed or added, a value nested thousands deep, a number token rewritten, the bytes
flipped or cut — and then runs every reader: ``Manifest.parse``, ``list_backups``,
``find_backup``, ``plan_prune`` now and a month later, and the ``list``/``show``
commands in text and JSON. The run is derandomized (the same inputs in CI every time)
and bounded; the number of inputs tried and how they ended are printed (``-s``).
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infrabackup.catalog import UNREADABLE, find_backup, list_backups
from infrabackup.cli import cli
from infrabackup.errors import InfraBackupError, IntegrityError
from infrabackup.manifest import Manifest
from infrabackup.retention import plan_prune
from tests.helpers import Stamp, make_keys, make_stamp

NOW = dt.datetime.now(dt.UTC)
#: Bounded so the whole module runs in well under a minute on a loaded 2-core machine.
EXAMPLES = 300
PROPERTY = settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class World:
    """The share with its three backups, and the victim's valid manifest to mutate."""

    def __init__(self, root: Path) -> None:
        keys = make_keys(root / "keys")
        self.stamp: Stamp = make_stamp(root / "stamp", keys, [("ACS", "backup"),
                                                             ("HLH", "region")])
        (self.stamp.source_dir("ACS") / "a.txt").write_text("acs ✓")
        (self.stamp.source_dir("HLH") / "h.txt").write_text("hlh")
        made = []
        for age in (3, 2, 1):
            self.stamp.now = NOW - dt.timedelta(days=age)
            made.append(self.stamp.backup())
        self.stamp.now = None
        self.older, self.victim, self.newer = made
        self.path = Path(self.stamp.env["BACKUP_SHARE_PATH"]) / self.stamp.layout.manifest(
            self.victim.timestamp, self.victim.backup_id)
        self.valid: dict[str, Any] = json.loads(self.path.read_text())
        self.paths = list(_paths(self.valid))
        self.outcomes: Counter[str] = Counter()

    def restore_victim(self) -> None:
        if self.path.is_dir():
            shutil.rmtree(self.path)
        self.path.write_text(json.dumps(self.valid))


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Any:
    """Every path (tuple of keys/indexes) into a JSON value, the root included."""
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, (*prefix, index))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return World(tmp_path_factory.mktemp("properties"))


# --- mutations ---------------------------------------------------------------------------

SENTINEL = "\x00sentinel\x00"
TEXT = st.one_of(
    st.text(st.characters(codec=None, categories=None), max_size=30),  # surrogates too
    # Values a reader might be fooled by: other statuses, modes, scopes, times, ids, names.
    st.sampled_from(["Succeeded", "PartialSucceeded", "Failed", "Running", "legacyKey",
                     "certificate", "region", "backup", "2026-01-01T00:00:00",
                     "2026-01-01T00:00:00+05:00", "0001-01-01T00:00:00+14:00",
                     "9999-12-31T23:59:59-12:00", "3f2b8c1e-4d5a-4b6c-9e7f-0a1b2c3d4e5f",
                     "ACS\n", "..", "a/b", "CON", "", "\ud800", "é" * 70, "0" * 40]),
)
NUMBERS = st.one_of(
    st.integers(), st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0, -1, 2**63, 2**64]),
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, TEXT)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(TEXT, inner, max_size=4)),
    max_leaves=12,
)
NUMBER_TOKENS = st.sampled_from(
    ["1e999", "-1e999", "Infinity", "-Infinity", "NaN", "9" * 5000, "1.5", "-0", "1e-999",
     "true", "null", '"1"'])


def _at(data: Any, path: tuple[Any, ...]) -> tuple[Any, Any]:
    """(container, key) of ``path`` in ``data`` (path non-empty)."""
    for key in path[:-1]:
        data = data[key]
    return data, path[-1]


def _dumps(data: Any, ascii_only: bool) -> bytes:
    text = json.dumps(data, ensure_ascii=ascii_only, allow_nan=True)
    return text.encode("utf-8", "surrogatepass")  # a lone surrogate becomes invalid UTF-8


@st.composite
def mutated(draw: st.DrawFn, world: World) -> bytes:
    """The victim's manifest with one or more mutations, as the bytes to write."""
    data = json.loads(json.dumps(world.valid))
    deep: str | None = None
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(world.paths))
        kind = draw(st.sampled_from(["replace", "delete", "add", "nest", "token"]))
        if not path:  # the root: replace the whole document
            if kind in ("replace", "token"):
                data = draw(JSON_VALUES)
            continue
        try:
            container, key = _at(data, path)
            container[key]  # the path may have gone with an earlier mutation
        except (KeyError, IndexError, TypeError):
            continue
        if kind == "replace":
            container[key] = draw(JSON_VALUES)
        elif kind == "delete":
            del container[key]
        elif kind == "add" and isinstance(container[key], dict):
            container[key][draw(TEXT)] = draw(JSON_VALUES)
        elif kind == "add" and isinstance(container[key], list):
            container[key].append(draw(JSON_VALUES))
        elif kind == "nest" and deep is None:
            depth = draw(st.sampled_from([5, 6, 7, 100, 1000, 5000]))
            deep = "[" * depth + json.dumps(container[key]) + "]" * depth
            container[key] = SENTINEL
        elif kind == "token" and deep is None:
            deep = draw(NUMBER_TOKENS)
            container[key] = SENTINEL
    raw = _dumps(data, draw(st.booleans()))
    if deep is not None:
        raw = raw.replace(json.dumps(SENTINEL).encode(), deep.encode(), 1)
    if draw(st.integers(0, 9)) == 0:  # now and then, damage the bytes themselves
        edit = bytearray(raw)
        at = draw(st.integers(0, max(len(edit) - 1, 0)))
        choice = draw(st.sampled_from(["flip", "cut", "insert"]))
        if choice == "flip" and edit:
            edit[at] ^= 1 << draw(st.integers(0, 7))
        elif choice == "cut":
            del edit[at:]
        else:
            edit[at:at] = draw(st.binary(min_size=1, max_size=8))
        raw = bytes(edit)
    return raw


# --- the properties ----------------------------------------------------------------------


def _check_every_reader(world: World, raw: bytes | None, *, all_commands: bool = True) -> str:
    """Run every reader over the share as it is; return how the victim ended. The commands
    run in text and JSON form with ``all_commands``, otherwise one form of each (the
    formatting code is the same for every input; the readers are what inputs reach)."""
    stamp, victim = world.stamp, world.victim
    try:
        Manifest.parse(raw, "manifest.json") if raw is not None else None
        parsed = "valid"
    except IntegrityError:
        parsed = "refused"

    listing = list_backups(stamp.share, stamp.layout)
    ids = [m.backup_id for m in listing.backups]
    assert world.newer.backup_id in ids and world.older.backup_id in ids
    if victim.backup_id in ids:
        ended = "valid"
        assert listing.incomplete == []
    else:
        [item] = listing.incomplete
        assert (item.backup_id, item.status) == (victim.backup_id, UNREADABLE)
        assert item.reason
        ended = "unreadable"
    if raw is not None and parsed == "refused":
        assert ended == "unreadable"

    try:
        find_backup(stamp.share, stamp.layout, victim.backup_id)
        assert ended == "valid"
    except InfraBackupError as exc:
        assert ended == "unreadable" and victim.backup_id in exc.message
    assert find_backup(stamp.share, stamp.layout, world.newer.backup_id).to_dict() == \
        world.newer.to_dict()

    assert plan_prune(stamp.share, stamp.layout, NOW, 7, {"HLH"}).delete == []
    later = plan_prune(stamp.share, stamp.layout, NOW + dt.timedelta(days=30), 7, {"HLH"})
    # The others stay prunable: the older goes, the newest restorable one stays; the
    # victim, valid or not, is past the retention period (unreadable, its region file is
    # an item of its own).
    assert {i.backup_id for i in later.delete} == {world.older.backup_id, victim.backup_id}

    runner = CliRunner()
    commands = [["list"], ["show", "--json", victim.backup_id]]
    if all_commands:
        commands += [["list", "--json"], ["show", victim.backup_id]]
    for args in commands:
        result = runner.invoke(cli, args, env=stamp.env)
        if result.exception is not None:
            assert isinstance(result.exception, InfraBackupError), result.exception
            assert args[0] == "show" and ended == "unreadable"
        else:
            assert result.exit_code == 0, result.output
    return ended


def test_every_mutated_manifest_ends_valid_or_unreadable_and_spares_the_others(
    world: World,
) -> None:
    tried: list[int] = []

    @PROPERTY
    @given(st.data())
    def check(data: st.DataObject) -> None:
        raw = data.draw(mutated(world))
        tried.append(len(raw))
        world.path.write_bytes(raw)
        try:
            ended = _check_every_reader(world, raw, all_commands=len(tried) % 4 == 1)
            world.outcomes[ended] += 1
        finally:
            world.restore_victim()

    check()
    print(f"\nmanifest property test: {len(tried)} mutated manifests tried "
          f"({dict(world.outcomes)}), {max(tried)} bytes at most")
    assert len(tried) == EXAMPLES
    # Both outcomes were reached: the mutations are neither all fatal nor all harmless.
    assert world.outcomes["unreadable"] > EXAMPLES // 2 and world.outcomes["valid"] > 0


def test_any_bytes_at_all_end_in_a_manifest_or_one_integrity_error() -> None:
    tried: list[int] = []

    @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None)
    @given(st.one_of(st.binary(max_size=512), JSON_VALUES.map(lambda v: _dumps(v, False))))
    def check(raw: bytes) -> None:
        tried.append(1)
        try:
            Manifest.parse(raw, "manifest.json")
        except IntegrityError as exc:
            assert exc.message.startswith("manifest.json")

    check()
    print(f"\nmanifest parse property test: {len(tried)} arbitrary inputs tried")
    assert len(tried) == EXAMPLES


def test_a_folder_named_manifest_json_and_a_missing_one(world: World) -> None:
    """The two shapes no byte mutation reaches: a folder in its place, and no file."""
    try:
        world.path.unlink()
        (world.path / "x").mkdir(parents=True)
        assert _check_every_reader(world, None) == "unreadable"
        shutil.rmtree(world.path)
        listing = list_backups(world.stamp.share, world.stamp.layout)
        assert [i.status for i in listing.incomplete] == ["Incomplete"]
    finally:
        world.restore_victim()
