"""The stamp lock holds across protocols: a folder that a Samba server serves can be backed up
over its local path (LocalShare) and over SMB (SmbShare), and the two see each other's lock.

Samba maps SMB byte-range locks to POSIX locks on the served file (``posix locking``, its
default): the SMB side takes a byte-range lock on :data:`~infrabackup.share.base.LOCK_RANGE` of
the lock file, the local side an fcntl lock on the same range (docs/SMB.md, "Locking").
Checked against the real Samba fixture, both directions, with the share objects and with
two real ``infrabackup backup`` processes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from infrabackup.errors import LockHeldError
from infrabackup.settings import ALL_SETTINGS
from infrabackup.share import LocalShare
from infrabackup.share.smb import SmbShare
from tests.crash import REPO, cli
from tests.helpers import Keys, Stamp, make_keys, make_stamp, write_random
from tests.servers.samba import PASSWORD, USERNAME, SambaSet

LOCK = "contoso.com/nyc/infrabackup.lock"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return make_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture
def folder(samba: SambaSet) -> Iterator[tuple[Path, str]]:
    """A folder of the Samba share: its local path, and its UNC path on the server."""
    name = f"lock-{uuid.uuid4().hex[:8]}"
    local = samba.share_dir("plain") / name
    local.mkdir()
    yield local, f"\\\\127.0.0.1\\plain\\{name}"


def smb_share(samba: SambaSet, unc_folder: str) -> SmbShare:
    return SmbShare.from_settings(samba.settings("plain", unc_folder.rsplit("\\", 1)[1]))


def test_a_local_lock_refuses_an_smb_lock_of_the_same_folder_and_keeps_its_holder_text(
        samba: SambaSet, folder: tuple[Path, str]) -> None:
    local_path, unc = folder
    local, remote = LocalShare(local_path), smb_share(samba, unc)
    try:
        with local.lock(LOCK, "backup local-1111"):
            with pytest.raises(LockHeldError) as caught, remote.lock(LOCK, "backup smb-2222"):
                pytest.fail("the SMB side got a lock held on the server's local path")
            assert "backup local-1111" in caught.value.message
            assert f"pid {os.getpid()}" in caught.value.message
            # The refused SMB open did not truncate the holder's text.
            assert b"backup local-1111" in (local_path / LOCK).read_bytes()
        with remote.lock(LOCK, "backup smb-3333"):  # free again once the local side let go
            pass
    finally:
        remote.close()


def test_an_smb_lock_refuses_a_local_lock_of_the_same_folder(
        samba: SambaSet, folder: tuple[Path, str]) -> None:
    local_path, unc = folder
    local, remote = LocalShare(local_path), smb_share(samba, unc)
    try:
        with remote.lock(LOCK, "backup smb-4444"):
            with pytest.raises(LockHeldError) as caught, local.lock(LOCK, "backup local-5555"):
                pytest.fail("the local side got a lock an SMB client holds")
            assert "backup smb-4444" in caught.value.message
            # The SMB way still works as before: a second SMB client is refused too.
            other = smb_share(samba, unc)
            try:
                with pytest.raises(LockHeldError, match="backup smb-4444"), \
                        other.lock(LOCK, "backup smb-6666"):
                    pytest.fail("a second SMB client got the lock")
            finally:
                other.close()
        with local.lock(LOCK, "backup local-7777"):
            pass
    finally:
        remote.close()


# --- two real backups of one stamp, one over each path ----------------------------------


def _env(stamp: Stamp, **extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items()
            if k not in ALL_SETTINGS and not k.startswith("BACKUP_")}
    return {**base, **stamp.env, **extra}


def _smb_env(samba: SambaSet, unc: str) -> dict[str, str]:
    return {"BACKUP_SHARE_PATH": unc, "BACKUP_SHARE_PORT": str(samba.main.port),
            "BACKUP_SHARE_USERNAME": USERNAME, "BACKUP_SHARE_PASSWORD": PASSWORD,
            "BACKUP_SHARE_TIMEOUT_SECONDS": "20"}


def _stopped_while_holding_the_lock(env: dict[str, str], masbackup: Path
                                    ) -> subprocess.Popen[str]:
    """A backup process, SIGSTOPped as soon as its backup folder exists (it holds the lock
    from before it creates the folder until after its manifest)."""
    proc = subprocess.Popen(cli("backup", "--json"), cwd=REPO, env=env, text=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    while proc.poll() is None:
        if masbackup.is_dir() and any(p.is_dir() for p in masbackup.glob("*/*")):
            os.killpg(proc.pid, signal.SIGSTOP)
            return proc
    raise AssertionError(f"the first backup ended before it was seen running: "
                         f"{proc.communicate()}")


@pytest.mark.parametrize("first", ["local", "smb"])
def test_a_backup_over_the_local_path_and_one_over_smb_never_run_at_once(
        first: str, samba: SambaSet, folder: tuple[Path, str], keys: Keys,
        tmp_path: Path) -> None:
    local_path, unc = folder
    stamp = make_stamp(tmp_path, keys)
    write_random(stamp.source_dir("ACS") / "db.bin", 8 * 1024 * 1024)
    local_env = _env(stamp, BACKUP_SHARE_PATH=str(local_path))
    smb_env = _env(stamp, **_smb_env(samba, unc))
    first_env, second_env = (local_env, smb_env) if first == "local" else (smb_env, local_env)
    masbackup = local_path / "contoso.com" / "nyc" / "MASBackup"

    # Given a backup of the stamp running over one path (stopped while it holds the lock) ...
    running = _stopped_while_holding_the_lock(first_env, masbackup)
    try:
        # ... when a backup of the same stamp starts over the other path, it is refused.
        second = subprocess.run(cli("backup", "--json"), cwd=REPO, env=second_env, text=True,
                                capture_output=True, timeout=120, check=False)
        assert second.returncode == 3, second.stdout + second.stderr
        error = json.loads(second.stdout)["error"]
        assert error["code"] == "BackupAlreadyRunning"
        assert f"pid {running.pid}" in error["message"], error
    finally:
        os.killpg(running.pid, signal.SIGCONT)
    out, err = running.communicate(timeout=120)
    assert running.returncode == 0, err
    backup_id = json.loads(out)["backupId"]

    # Then exactly one backup exists: the first one's, complete.
    folders = [p for p in masbackup.glob("*/*") if p.is_dir()]
    assert [p.name for p in folders] == [backup_id]
    assert (folders[0] / "manifest.json").is_file()
