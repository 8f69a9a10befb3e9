"""Property tests: any source tree a POSIX folder can hold backs up, verifies and restores
identically (what restore must not make is skipped and named, nothing else differs), and
any name survives the manifest and its MAC.

Generated trees mix names (unicode, bytes that are not UTF-8, backslashes, colons,
leading dots and spaces, trailing dots, 255-byte names), depths (nested folders and a
chain up to 40 deep), empty folders, empty and sparse files, modes, symbolic links that
stay inside, leave the component or dangle, and FIFOs. Examples are bounded and
derandomized (no example database), so CI tries the same inputs every run
(``--hypothesis-show-statistics`` prints how many).
"""

from __future__ import annotations

import datetime as dt
import os
import posixpath
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from infrabackup.localfs import remove_tree
from infrabackup.manifest import ComponentRecord, Manifest, check_manifest_mac
from infrabackup.restore import restore_backup, verify_backup
from infrabackup.stream.encryption import new_data_key
from tests.helpers import Keys, make_keys, make_stamp

TREE_EXAMPLES = 80
NAME_EXAMPLES = 300

# ---- strategies ------------------------------------------------------------------------

_AWKWARD = [b"back\\slash.txt", b"time-12:30.log", b"C:", b" leading space",
            b"trailing dot.", b"trailing space ", b".hidden", b"..double", b"-dash",
            b"*?\"<>|", b"tab\there", b"new\nline", "ünïcødé ファイル".encode(),
            b"caf\xe9", b"\xff\xfe", b"\x80", b"x" * 255, "é".encode() * 127]


def _ok_name(name: bytes) -> bool:
    return (0 < len(name) <= 255 and b"/" not in name and b"\0" not in name
            and name not in (b".", b"..") and not name.startswith(b".infrabackup-"))


names = st.one_of(
    st.sampled_from(_AWKWARD),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/\0"),
            min_size=1, max_size=30).map(lambda s: s.encode()),
    st.binary(min_size=1, max_size=30),
).filter(_ok_name)

link_targets = st.one_of(
    st.sampled_from([b"..", b"../..", b"/etc/hostname", b"../outside", b"./", b"missing",
                     b"sub/../x", b"a/b/c", b"caf\xe9"]),
    names,
    st.lists(names, min_size=1, max_size=3).map(b"/".join),
)

files = st.tuples(st.just("file"), st.binary(max_size=2000),
                  st.sampled_from([0o644, 0o600, 0o755, 0o400, 0o000]),
                  st.floats(0, 2_000_000_000, allow_nan=False))
sparse = st.tuples(st.just("sparse"), st.integers(1, 3 * 1024 * 1024),
                   st.lists(st.tuples(st.integers(0, 3 * 1024 * 1024),
                                      st.binary(min_size=1, max_size=64)), max_size=3))
leaves = st.one_of(files, files, sparse, st.tuples(st.just("link"), link_targets),
                   st.just(("fifo",)), st.just(("dir", {})))


def _folder(children: Any) -> Any:
    return st.dictionaries(names, children, max_size=4).map(lambda d: ("dir", d))


trees = st.tuples(
    st.dictionaries(names, st.recursive(leaves, _folder, max_leaves=12), max_size=6),
    st.integers(0, 40),  # a chain of folders this deep, with a file at the bottom
)


# ---- building and comparing trees ----------------------------------------------------


def _make(root: bytes, tree: dict[bytes, Any]) -> None:
    for name, node in tree.items():
        path = root + b"/" + name
        kind = node[0]
        if kind == "dir":
            os.mkdir(path)
            _make(path, node[1])
        elif kind == "file":
            with open(path, "wb") as f:
                f.write(node[1])
            os.chmod(path, node[2])
            os.utime(path, (node[3], node[3]))
        elif kind == "sparse":
            with open(path, "wb") as f:
                f.truncate(node[1])
                for offset, data in node[2]:
                    f.seek(offset)
                    f.write(data)
        elif kind == "link":
            os.symlink(node[1], path)
        else:
            os.mkfifo(path)


def _picture(root: bytes) -> dict[bytes, Any]:
    """Each entry by its path's bytes: type, content or target, mode bits, mtime."""
    out: dict[bytes, Any] = {}
    stack = [b""]
    while stack:
        rel = stack.pop()
        for name in os.listdir(root + b"/" + rel if rel else root):
            sub = rel + b"/" + name if rel else name
            path = root + b"/" + sub
            st_ = os.lstat(path)
            if stat.S_ISLNK(st_.st_mode):
                out[sub] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st_.st_mode):
                out[sub] = ("dir", stat.S_IMODE(st_.st_mode), st_.st_mtime)
                stack.append(sub)
            elif stat.S_ISREG(st_.st_mode):
                with open(path, "rb") as f:
                    out[sub] = ("file", f.read(), stat.S_IMODE(st_.st_mode), st_.st_mtime,
                                st_.st_blocks)
            else:
                out[sub] = ("special",)
    return out


def _leaves_component(link: bytes, target: bytes) -> bool:
    """Whether ``target`` of the link at ``link`` points outside the component."""
    if target.startswith(b"/"):
        return True
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(link), target))
    return joined == b".." or joined.startswith(b"../")


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return make_keys(tmp_path_factory.mktemp("keys"), "properties")


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("examples")
    yield folder
    remove_tree(folder, ignore_errors=True)


_BOUNDED = settings(max_examples=TREE_EXAMPLES, deadline=None, derandomize=True,
                    database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


@_BOUNDED
@given(generated=trees)
def test_any_tree_backs_up_verifies_and_restores_identically(
    generated: tuple[dict[bytes, Any], int], keys: Keys, scratch: Path
) -> None:
    top, chain = generated
    assume(b"chain" not in top)
    work = Path(tempfile.mkdtemp(dir=scratch))
    try:
        stamp = make_stamp(work, keys)
        source = os.fsencode(stamp.source_dir("ACS"))
        _make(source, top)
        bottom = source
        for depth in range(chain):
            bottom += b"/chain" if depth == 0 else b"/c"
            os.mkdir(bottom)
        if chain:
            with open(bottom + b"/bottom.txt", "wb") as f:
                f.write(b"at the bottom")
        before = _picture(source)

        manifest = stamp.backup()
        record = manifest.component("ACS")
        assert record is not None and record.status == "Succeeded", record
        assert verify_backup(stamp.share, stamp.layout, manifest.backup_id,
                             stamp.keyring()).ok
        result = restore_backup(stamp.share, stamp.layout, manifest.backup_id,
                                stamp.keyring(), work / "r")

        after = _picture(os.fsencode(work / "r" / "ACS"))
        fifos = {p for p, v in before.items() if v[0] == "special"}
        assert {os.fsencode(p) for p in record.skipped} == fifos
        outside = {p for p, v in before.items() if v[0] == "link" and _leaves_component(p, v[1])}
        [done] = result.components
        assert {os.fsencode(str(p)) for p in done["skipped"]} == outside  # type: ignore[attr-defined]
        assert len(done["warnings"]) == len(outside)  # type: ignore[arg-type]
        expected = {p: v for p, v in before.items() if p not in fifos | outside}
        assert after.keys() == expected.keys()
        for path, now in after.items():
            was = expected[path]
            if was[0] == "file":
                # Same bytes, mode and time; never more blocks (holes come back as holes).
                assert now[:3] == was[:3], path
                assert now[3] == pytest.approx(was[3], abs=1e-3), path
                assert now[4] <= was[4] + 8, (path, now[4], was[4])
            elif was[0] == "dir":
                assert now[1] == was[1] and now[2] == pytest.approx(was[2], abs=1e-3), path
            else:
                assert now == was, path
    finally:
        remove_tree(work, ignore_errors=True)


@settings(max_examples=NAME_EXAMPLES, deadline=None, derandomize=True, database=None)
@given(listed=st.lists(st.one_of(names, st.binary(min_size=1, max_size=20)), max_size=6),
       message=st.text(max_size=40))
def test_any_name_survives_the_manifest_and_its_mac(listed: list[bytes], message: str) -> None:
    paths = [os.fsdecode(n) for n in listed]
    now = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    record = ComponentRecord("ACS", "backup", "directory", "Succeeded",
                             file="contoso.com/nyc/MASBackup/20260102T030405Z/"
                                  "00000000-0000-0000-0000-000000000001/ACS.bin",
                             sha256="0" * 64, message=message, changed=paths,
                             vanished=paths[::-1], skipped=paths[:2])
    manifest = Manifest("00000000-0000-0000-0000-000000000001", "20260102T030405Z",
                        "Succeeded", now, now, {"externalDomain": "contoso.com",
                                                "region": "nyc", "scaleUnit": None,
                                                "version": "1.2408.1.50"},
                        {"mode": "legacyKey", "keyWrap": "A256GCM", "wrappedKey": "AAAA",
                         "keyId": "0123456789ABCDEF"}, [record])
    key = new_data_key()

    raw = manifest.seal(key)

    raw.decode("utf-8")  # valid UTF-8 JSON, whatever the names
    again = Manifest.parse(raw, "manifest.json")
    check_manifest_mac(key, again.raw)
    [back] = again.components
    assert (back.changed, back.vanished, back.skipped) == (paths, paths[::-1], paths[:2])
    assert back.message == message

