"""Whole backups against a real Samba that fails: the right alert, and nothing lost.

For each fault: an earlier backup exists; the faulty backup fails with the expected alert
and writes no manifest; once the fault is removed, the earlier backup still lists,
verifies and restores byte-identical, leftovers go with the next prune, and the next
backup succeeds without manual clean-up.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from infrabackup.alerts import Alert
from infrabackup.catalog import list_backups
from infrabackup.errors import (
    AuthenticationError,
    CapacityError,
    ConnectivityError,
    InfraBackupError,
    PathError,
)
from infrabackup.jobs.backup_job import JobDependencies, run_backup_job
from infrabackup.keys.provider import decryption_keyring
from infrabackup.layout import stamp_layout
from infrabackup.manifest import Manifest
from infrabackup.restore import restore_backup, verify_backup
from infrabackup.retention import prune
from infrabackup.settings import Settings, load_settings
from infrabackup.share import open_share
from tests.helpers import Keys, make_keys, tree, write_random
from tests.servers.samba import SambaServer, SambaSet, free_port

TIMEOUT = 3.0


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return make_keys(tmp_path_factory.mktemp("keys"))


class Stamp:
    """A stamp backing up ``source`` to an SMB share described by ``share_settings``."""

    def __init__(self, share_settings: Settings, keys: Keys, source: Path) -> None:
        self.stamp_env = {
            "BACKUP_EXTERNAL_DOMAIN": "contoso.com",
            "BACKUP_REGION": "nyc",
            "BACKUP_STAMP_VERSION": "1.2408.1.50",
            "BACKUP_ENCRYPTION_CERT": str(keys.cer),
            "BACKUP_DECRYPTION_CERT": str(keys.pfx),
            "BACKUP_DECRYPTION_CERT_PASSWORD": keys.password,
            "BACKUP_SOURCES": f'[{{"name": "ACS", "path": "{source}"}}]',
        }
        self.good = self.with_share(share_settings)
        self.source = source

    def with_share(self, share_settings: Settings, **overrides: str) -> Settings:
        return load_settings({**share_settings.given, **self.stamp_env, **overrides})

    def backup(self, settings: Settings | None = None) -> Manifest:
        settings = settings or self.good
        share = open_share(settings)
        try:
            return run_backup_job(JobDependencies(settings, share))
        finally:
            share.close()

    def assert_nothing_lost(self, earlier: Manifest, tmp: Path) -> None:
        share = open_share(self.good)
        layout = stamp_layout(self.good)
        try:
            later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)
            prune(share, self.good, layout, later, dry_run=False, holder="test")
            listing = list_backups(share, layout)
            assert [m.backup_id for m in listing.backups] == [earlier.backup_id]
            assert listing.incomplete == []
            keyring = decryption_keyring(self.good)
            assert verify_backup(share, layout, earlier.backup_id, keyring).ok
            restore_backup(share, layout, earlier.backup_id, keyring, tmp / "restored")
            assert tree(tmp / "restored" / "ACS") == self.expected
        finally:
            share.close()
        again = self.backup()
        assert again.status == "Succeeded"

    def snapshot(self) -> None:
        self.expected = tree(self.source)


def _assert_alert(error: InfraBackupError, kind: type[InfraBackupError], alert: Alert) -> None:
    assert isinstance(error, kind), repr(error)
    assert error.alert is alert


@pytest.fixture
def source(tmp_path: Path) -> Path:
    folder = tmp_path / "acs"
    write_random(folder / "state.db", 512 * 1024, seed=1)
    (folder / "config.json").write_text('{"replicas": 3}')
    return folder


@pytest.mark.parametrize(
    ("fault", "kind", "alert"),
    [
        ("wrong password", AuthenticationError, Alert.AUTHENTICATION),
        ("missing share", PathError, Alert.PATH),
        ("missing folder", PathError, Alert.PATH),
        ("unresolvable name", PathError, Alert.PATH),
        ("closed port", ConnectivityError, Alert.CONNECTIVITY),
        ("read-only share", AuthenticationError, Alert.AUTHENTICATION),
    ],
)
def test_settings_faults_alert_and_lose_nothing(
    samba: SambaSet, keys: Keys, source: Path, tmp_path: Path,
    fault: str, kind: type[InfraBackupError], alert: Alert,
) -> None:
    folder = f"faults-{fault.replace(' ', '-')}"
    samba.share_dir("plain").joinpath(folder).mkdir()
    stamp = Stamp(samba.settings("plain", folder, timeout=TIMEOUT), keys, source)
    stamp.snapshot()
    earlier = stamp.backup()
    share_settings = {
        "wrong password": lambda: samba.settings("plain", folder, password="wrong-pw-1"),
        "missing share": lambda: samba.settings("nosuchshare", timeout=TIMEOUT),
        "missing folder": lambda: samba.settings("plain", "no", "such", timeout=TIMEOUT),
        "unresolvable name": lambda: samba.settings(
            "plain", folder, host="fileserver.infrabackup.invalid", timeout=TIMEOUT),
        "closed port": lambda: samba.settings("plain", folder, port=free_port(),
                                              timeout=TIMEOUT),
        "read-only share": lambda: samba.settings("readonly", timeout=TIMEOUT),
    }[fault]()
    with pytest.raises(InfraBackupError) as caught:
        stamp.backup(stamp.with_share(share_settings))
    _assert_alert(caught.value, kind, alert)
    stamp.assert_nothing_lost(earlier, tmp_path)


def test_a_full_share_alerts_capacity_and_loses_nothing(
    samba: SambaSet, keys: Keys, tmp_path: Path
) -> None:
    source = tmp_path / "acs"
    write_random(source / "small.db", 256 * 1024, seed=2)
    stamp = Stamp(samba.settings("small", timeout=TIMEOUT), keys, source)
    stamp.snapshot()
    earlier = stamp.backup()
    write_random(source / "too-big.db", 12 * 1024 * 1024, seed=3)  # the share holds 8 MiB
    with pytest.raises(InfraBackupError) as caught:
        stamp.backup()
    _assert_alert(caught.value, CapacityError, Alert.CAPACITY)
    (source / "too-big.db").unlink()  # the fault removed: the data fits again
    stamp.assert_nothing_lost(earlier, tmp_path)


def _during_upload(server: SambaServer, action: Callable[[], None]) -> Iterator[None]:
    """Run ``action`` once a backup's partial file on ``server`` holds some data."""
    backing = server.share_dir("plain")
    stop = threading.Event()

    def watch() -> None:
        deadline = time.monotonic() + 30
        while not stop.is_set() and time.monotonic() < deadline:
            for path in backing.rglob("*.partial-*"):
                try:
                    big = path.stat().st_size > 4 * 1024 * 1024
                except OSError:
                    continue
                if big:
                    action()
                    return
            time.sleep(0.002)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    yield
    stop.set()
    watcher.join()


@pytest.mark.parametrize("fault", ["killed", "frozen"])
def test_a_server_that_dies_or_hangs_mid_backup_alerts_connectivity_and_loses_nothing(
    samba_victim: SambaServer, keys: Keys, tmp_path: Path, fault: str
) -> None:
    source = tmp_path / "acs"
    write_random(source / "small.db", 256 * 1024, seed=4)
    stamp = Stamp(samba_victim.settings("plain", timeout=TIMEOUT), keys, source)
    stamp.snapshot()
    earlier = stamp.backup()
    write_random(source / "large.db", 96 * 1024 * 1024, seed=5)
    action = samba_victim.kill if fault == "killed" else samba_victim.freeze
    started = time.monotonic()
    with pytest.raises(InfraBackupError) as caught:
        for _ in _during_upload(samba_victim, action):
            stamp.backup()
    elapsed = time.monotonic() - started
    _assert_alert(caught.value, ConnectivityError, Alert.CONNECTIVITY)
    assert elapsed < 4 * TIMEOUT + 10, f"the fault took {elapsed:.1f} s to surface"
    if fault == "killed":
        samba_victim.start()
    else:
        samba_victim.thaw()
    (source / "large.db").unlink()
    stamp.assert_nothing_lost(earlier, tmp_path)
