"""The Share contract (shared/infrabackup/share/base.py), checked against every implementation.

Each test runs against every implementation and every way an SMB session can protect its
data: a LocalShare on a temporary folder; an SmbShare on the real Samba's plain share (SMB
3.1.1, encrypted because the server offers it) and its encryption-required share; and on
servers that negotiate otherwise (tests/servers/samba.py, ``VARIANTS``): signed-only 3.1.1
(AES-GMAC), signed 3.0.2 (AES-CMAC), encrypted 3.0.2 (AES-128-CCM) and signed 2.1
(HMAC-SHA256). ``test_each_smb_backend_negotiates_what_its_name_says`` checks that each
variant really is what its name says. Each test gets a fresh folder of its own (for SMB: a
folder inside the share named as the UNC path's base folder), so the tests never see each
other's files.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import types
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import pytest

from infrabackup.cli.render import exit_code
from infrabackup.errors import LockHeldError, PathError
from infrabackup.share import open_share
from infrabackup.share.base import PARTIAL_MARKER, Share
from infrabackup.share.local import LocalShare
from infrabackup.share.smb import SmbShare, wire
from tests.servers.samba import SambaSet, SambaVariants

REPO = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024

BACKENDS = [
    "local",
    "smb-plain",
    "smb-encrypted",
    "smb-signed-3.1.1",
    "smb-signed-3.0.2",
    "smb-encrypted-3.0.2",
    "smb-signed-2.1",
]
#: What each SMB backend must negotiate: (dialect, "sign" algorithm | "encrypt" cipher ids).
NEGOTIATED: dict[str, tuple[int, str, frozenset[int]]] = {
    "smb-plain": (0x0311, "encrypt", wire.GCM_CIPHERS),
    "smb-encrypted": (0x0311, "encrypt", wire.GCM_CIPHERS),
    "smb-signed-3.1.1": (0x0311, "sign", frozenset({wire.SIGN_AES_GMAC})),
    "smb-signed-3.0.2": (0x0302, "sign", frozenset({wire.SIGN_AES_CMAC})),
    "smb-encrypted-3.0.2": (0x0302, "encrypt", frozenset({wire.AES_128_CCM})),
    "smb-signed-2.1": (0x0210, "sign", frozenset({wire.SIGN_HMAC_SHA256})),
}


@dataclass
class Backend:
    """How to make share objects on one test's folder, and how a subprocess makes one."""

    name: str
    make: Callable[[], Share]
    spec: dict[str, object]  # JSON for _HOLDER_SCRIPT


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    folder = f"t-{uuid.uuid4().hex[:12]}"
    made: list[Share] = []
    if request.param == "local":
        root = tmp_path / folder
        root.mkdir()

        def make() -> Share:
            made.append(LocalShare(root))
            return made[-1]

        spec: dict[str, object] = {"kind": "local", "root": str(root)}
    else:
        share_name = request.param.removeprefix("smb-")
        if share_name in ("plain", "encrypted"):
            servers: SambaSet = request.getfixturevalue("samba")
            servers.share_dir(share_name).joinpath(folder).mkdir()
            settings = servers.settings(share_name, folder)
        else:
            variants: SambaVariants = request.getfixturevalue("samba_variants")
            server = variants(share_name)
            server.share_dir("plain").joinpath(folder).mkdir()
            settings = server.settings("plain", folder)

        def make() -> Share:
            made.append(SmbShare.from_settings(settings))
            return made[-1]

        spec = {"kind": "smb", "env": dict(settings.given)}
    try:
        yield Backend(request.param, make, spec)
    finally:
        for share in made:
            share.close()


@pytest.fixture
def share(backend: Backend) -> Share:
    return backend.make()


def chunks_of(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def read_all(share: Share, path: str) -> bytes:
    return b"".join(share.read_stream(path))


def names(share: Share, path: str = "") -> set[str]:
    return {e.name for e in share.list_dir(path)}


# ---- write_stream / read_stream -------------------------------------------------------


def test_each_smb_backend_negotiates_what_its_name_says(backend: Backend) -> None:
    if backend.name == "local":
        return  # nothing to negotiate
    share = backend.make()
    assert isinstance(share, SmbShare)
    share.list_dir("")
    connection = next(iter(share._cache.values()))
    session = next(iter(connection.session_table.values()))
    dialect, protection, algorithms = NEGOTIATED[backend.name]
    assert connection.dialect == dialect
    if protection == "encrypt":
        assert session.encrypt_data is True
        cipher = connection.cipher_id if dialect >= 0x0311 else wire.AES_128_CCM
        assert cipher in algorithms
    else:
        assert session.encrypt_data is False and session.signing_required is True
        algorithm = wire.signing_algorithm(connection.dialect, connection.signing_algorithm_id)
        assert algorithm in algorithms


def test_write_then_read_back_is_byte_identical(share: Share) -> None:
    data = os.urandom(3 * MiB + 12345)
    written = share.write_stream("a.bin", chunks_of(data, 100_000))
    assert written == len(data)
    assert read_all(share, "a.bin") == data


def test_empty_stream_writes_an_empty_file(share: Share) -> None:
    assert share.write_stream("empty.bin", iter(())) == 0
    entry = share.stat("empty.bin")
    assert entry is not None and entry.size == 0 and not entry.is_dir
    assert read_all(share, "empty.bin") == b""


def test_a_64_mib_stream_round_trips_in_bounded_chunks(share: Share) -> None:
    block = os.urandom(MiB)
    total = 64
    sent = hashlib.sha256()

    def produce() -> Iterator[bytes]:
        for i in range(total):
            chunk = i.to_bytes(4, "big") + block[4:]  # every MiB differs
            sent.update(chunk)
            yield chunk

    assert share.write_stream("big.bin", produce()) == total * MiB
    received = hashlib.sha256()
    largest = 0
    count = 0
    for chunk in share.read_stream("big.bin", chunk_size=2 * MiB):
        received.update(chunk)
        largest = max(largest, len(chunk))
        count += len(chunk)
    assert count == total * MiB
    assert received.hexdigest() == sent.hexdigest()
    assert largest <= 2 * MiB, "read_stream must stream, not return the file at once"


def test_write_replaces_an_existing_file_whole(share: Share) -> None:
    share.write_stream("f.bin", [b"old " * 1000])
    share.write_stream("f.bin", [b"new!", b" and longer " * 2000])
    assert read_all(share, "f.bin") == b"new!" + b" and longer " * 2000
    assert names(share) == {"f.bin"}


def test_no_partial_file_is_visible_under_the_final_name_while_writing(
    backend: Backend,
) -> None:
    writer, reader = backend.make(), backend.make()
    seen: list[object] = []

    def produce() -> Iterator[bytes]:
        yield os.urandom(9 * MiB)  # more than one SMB write request: bytes reach the server
        seen.append(reader.stat("dir/new.bin"))
        seen.append(sorted(e.name for e in reader.list_dir("dir")))
        yield b"tail"

    writer.make_dirs("dir")
    writer.write_stream("dir/new.bin", produce())
    assert seen[0] is None, "the final name must not exist before the rename"
    temp_names = seen[1]
    assert isinstance(temp_names, list) and len(temp_names) == 1
    assert PARTIAL_MARKER in temp_names[0], "the temporary name carries PARTIAL_MARKER"
    entry = reader.stat("dir/new.bin")
    assert entry is not None and entry.size == 9 * MiB + 4
    assert names(reader, "dir") == {"new.bin"}


def test_a_failing_chunk_iterator_removes_the_temp_file_and_keeps_the_old(share: Share) -> None:
    share.write_stream("keep.bin", [b"version 1"])

    class SourceBroke(Exception):
        pass

    def produce() -> Iterator[bytes]:
        yield os.urandom(10 * MiB)
        raise SourceBroke("the source went away")

    with pytest.raises(SourceBroke):  # the caller's own exception, unchanged
        share.write_stream("keep.bin", produce())
    assert read_all(share, "keep.bin") == b"version 1"
    assert names(share) == {"keep.bin"}, "no temporary file may be left behind"


def test_concurrent_readers_of_one_file(share: Share) -> None:
    data = os.urandom(3 * MiB)
    share.write_stream("r.bin", [data])
    first = share.read_stream("r.bin", chunk_size=MiB)
    second = share.read_stream("r.bin", chunk_size=MiB)
    got_first, got_second = bytearray(), bytearray()
    for a, b in zip(first, second, strict=True):
        got_first += a
        got_second += b
    assert bytes(got_first) == data and bytes(got_second) == data


def test_abandoning_a_read_releases_the_file(share: Share) -> None:
    share.write_stream("r.bin", [os.urandom(3 * MiB)])
    stream = share.read_stream("r.bin", chunk_size=MiB)
    assert isinstance(stream, types.GeneratorType), "read_stream is a generator"
    next(stream)
    stream.close()
    share.remove("r.bin")
    assert share.stat("r.bin") is None


def test_reading_a_missing_file_is_a_path_fault(share: Share) -> None:
    with pytest.raises(PathError):
        read_all(share, "missing.bin")


def test_writing_into_a_missing_folder_is_a_path_fault(share: Share) -> None:
    with pytest.raises(PathError):
        share.write_stream("no/such/folder.bin", [b"x"])


# ---- list, stat, remove, make_dirs ------------------------------------------------------


def test_list_dir_names_files_and_folders_with_sizes(share: Share) -> None:
    share.make_dirs("d/sub")
    share.write_stream("d/one.bin", [b"1" * 10])
    share.write_stream("d/two.bin", [b"2" * 20])
    entries = {e.name: e for e in share.list_dir("d")}
    assert set(entries) == {"sub", "one.bin", "two.bin"}
    assert entries["sub"].is_dir
    assert not entries["one.bin"].is_dir and entries["one.bin"].size == 10
    assert entries["two.bin"].size == 20
    assert entries["one.bin"].modified.tzinfo is not None
    assert names(share) == {"d"}


def test_list_dir_of_a_missing_folder_is_a_path_fault(share: Share) -> None:
    with pytest.raises(PathError):
        share.list_dir("nothing-here")


def test_stat_of_files_folders_and_missing_paths(share: Share) -> None:
    share.make_dirs("d")
    share.write_stream("d/f.bin", [b"abc"])
    file_entry = share.stat("d/f.bin")
    assert file_entry is not None
    assert (file_entry.name, file_entry.is_dir, file_entry.size) == ("f.bin", False, 3)
    folder_entry = share.stat("d")
    assert folder_entry is not None and folder_entry.is_dir
    assert share.stat("d/missing.bin") is None
    assert share.stat("no-folder/missing.bin") is None


def test_remove_is_idempotent(share: Share) -> None:
    share.write_stream("f.bin", [b"x"])
    share.remove("f.bin")
    assert share.stat("f.bin") is None
    share.remove("f.bin")  # already gone: no error
    share.remove("no-folder/f.bin")


def test_remove_tree_removes_everything_and_is_idempotent(share: Share) -> None:
    share.make_dirs("t/a/b")
    share.write_stream("t/top.bin", [b"1"])
    share.write_stream("t/a/mid.bin", [b"2"])
    share.write_stream("t/a/b/deep.bin", [b"3"])
    share.make_dirs("keep")
    share.remove_tree("t")
    assert share.stat("t") is None
    assert names(share) == {"keep"}
    share.remove_tree("t")  # already gone: no error


def test_make_dirs_creates_parents_and_is_idempotent(share: Share) -> None:
    share.make_dirs("x/y/z")
    share.make_dirs("x/y/z")
    share.make_dirs("x/y")
    entry = share.stat("x/y/z")
    assert entry is not None and entry.is_dir
    share.write_stream("x/y/z/f.bin", [b"ok"])
    assert read_all(share, "x/y/z/f.bin") == b"ok"


def test_capacity_reports_free_and_total(share: Share) -> None:
    capacity = share.capacity()
    assert capacity.total_bytes > 0
    assert 0 <= capacity.free_bytes <= capacity.total_bytes


# ---- lock ---------------------------------------------------------------------------------


def test_lock_is_exclusive_across_share_objects_and_names_the_holder(backend: Backend) -> None:
    first, second = backend.make(), backend.make()
    with first.lock("locks/stamp.lock", "backup 1111 (scheduled)"):
        with pytest.raises(LockHeldError) as caught, second.lock("locks/stamp.lock", "2222"):
            pytest.fail("a second holder got the lock")
        message = str(caught.value)
        assert "backup 1111 (scheduled)" in message
        assert f"pid {os.getpid()}" in message
        assert "since" in message
        assert exit_code(caught.value) == 3
    with (
        second.lock("locks/stamp.lock", "backup 2222"),
        pytest.raises(LockHeldError, match="backup 2222"),
        first.lock("locks/stamp.lock", "backup 3333"),
    ):
        pytest.fail("the first share got a lock the second holds")


def test_a_lock_is_released_when_its_context_fails(backend: Backend) -> None:
    first, second = backend.make(), backend.make()
    with pytest.raises(RuntimeError), first.lock("stamp.lock", "failing backup"):
        raise RuntimeError("the backup failed")
    with second.lock("stamp.lock", "next backup"):
        pass


_HOLDER_SCRIPT = """
import json, sys, time
from pathlib import Path
spec = json.loads(sys.stdin.readline())
if spec["kind"] == "local":
    from infrabackup.share.local import LocalShare
    share = LocalShare(Path(spec["root"]))
else:
    from infrabackup.settings import load_settings
    from infrabackup.share.smb import SmbShare
    share = SmbShare.from_settings(load_settings(spec["env"]))
with share.lock("locks/stamp.lock", "child backup"):
    print("LOCKED", flush=True)
    time.sleep(600)
"""


def test_a_lock_held_by_a_killed_process_is_free_again(backend: Backend) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", _HOLDER_SCRIPT],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write(json.dumps(backend.spec) + "\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "LOCKED"
        share = backend.make()
        with pytest.raises(LockHeldError) as caught, share.lock("locks/stamp.lock", "parent"):
            pass
        assert "child backup" in str(caught.value)
        assert f"pid {child.pid}" in str(caught.value)

        child.send_signal(signal.SIGKILL)  # no clean-up in the child: the server must release
        child.wait(timeout=10)
        assert _acquire_within(share, "locks/stamp.lock", seconds=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def _acquire_within(share: Share, path: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        try:
            lock: AbstractContextManager[None] = share.lock(path, "after the kill")
            with lock:
                return True
        except LockHeldError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)


def test_smb_requests_stay_within_what_the_server_negotiated(samba: SambaSet) -> None:
    """A server that allows smaller requests than ours (SMB 2.0.2: 64 KiB) still works."""
    share = open_share(samba.settings("plain"))
    assert isinstance(share, SmbShare)
    data = os.urandom(3 * 1024 * 1024 + 5)
    try:
        share.write_stream("tiny.bin", [b"warm-up"])  # connects
        connection = next(iter(share._cache.values()))
        connection.max_write_size = connection.max_read_size = 64 * 1024
        assert share.write_stream("limited.bin", [data]) == len(data)
        assert b"".join(share.read_stream("limited.bin")) == data
    finally:
        share.remove("tiny.bin")
        share.remove("limited.bin")
        share.close()
