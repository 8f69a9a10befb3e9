"""Every way the SMB share fails, against a real Samba: the right error, alert and status,
nothing partial left behind when the server can still be reached, and the next write
succeeding once the fault is gone. Also: signing and encryption as configured.

The fault table these tests pin down is in docs/SMB.md.
"""

from __future__ import annotations

import errno
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from smbprotocol.exceptions import (
    SMB2ErrorResponse,
    SMBAuthenticationError,
    SMBConnectionClosed,
    SMBException,
    SMBOSError,
    SMBResponseException,
)
from smbprotocol.header import SMB2HeaderResponse

from infrabackup.alerts import Alert
from infrabackup.errors import (
    AuthenticationError,
    CapacityError,
    ConnectivityError,
    GeneralFault,
    InfraBackupError,
    PathError,
)
from infrabackup.settings import Settings, load_settings
from infrabackup.share.base import PARTIAL_MARKER
from infrabackup.share.smb import TIMED_OUT, SmbShare, SmbTarget, translate_smb_error
from tests.servers.samba import PASSWORD, SMALL_SHARE_BYTES, SambaServer, SambaSet, free_port

MiB = 1024 * 1024
TIMEOUT = 3.0  # BACKUP_SHARE_TIMEOUT_SECONDS for the fault tests


@pytest.fixture
def folder(samba: SambaSet) -> str:
    """A fresh base folder inside the plain share."""
    name = f"f-{uuid.uuid4().hex[:12]}"
    samba.share_dir("plain").joinpath(name).mkdir()
    return name


def open_share(settings: Settings, **overrides: float) -> SmbShare:
    share = SmbShare.from_settings(settings)
    for name, value in overrides.items():
        setattr(share, name, value)
    return share


def assert_classified(
    error: InfraBackupError, kind: type[InfraBackupError], alert: Alert, status: str | None
) -> None:
    assert type(error) is kind, f"{type(error).__name__}: {error}"
    assert error.alert is alert
    if status is not None:
        assert error.status == status
    assert PASSWORD not in str(error) and PASSWORD not in repr(error.to_dict())


def partials(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if PARTIAL_MARKER in p.name)


# ---- the mapping itself ------------------------------------------------------------------

TARGET = SmbTarget("files.contoso.com", 445, "AzSBackups", r"\\files.contoso.com\AzSBackups", "u")


def response_exception(status: int) -> SMBResponseException:
    """The exception smbprotocol raises for an SMB response with ``status``."""
    header = SMB2HeaderResponse()
    header["status"] = status
    header["data"] = SMB2ErrorResponse()
    return SMBResponseException(header)


def wrapped(cause: BaseException) -> ValueError:
    """What smbprotocol's transport raises on a socket failure: ValueError from ``cause``."""
    try:
        raise ValueError("Failed to connect to 'host:445'") from cause
    except ValueError as exc:
        return exc


MAPPING = [
    # (what smbprotocol raises, our error, alert, status)   - the table of TESTING.md, and more
    (response_exception(0xC000006D), AuthenticationError, Alert.AUTHENTICATION, "0xC000006D"),
    (SMBOSError(0xC000006D, r"\\h\s"), AuthenticationError, Alert.AUTHENTICATION, "0xC000006D"),
    (SMBAuthenticationError("no credentials"), AuthenticationError, Alert.AUTHENTICATION, None),
    (SMBOSError(0xC0000022, r"\\h\s\f"), AuthenticationError, Alert.AUTHENTICATION, "0xC0000022"),
    (SMBOSError(0xC0000225, r"\\h\s"), PathError, Alert.PATH, "0xC0000225"),
    (response_exception(0xC00000CC), PathError, Alert.PATH, "0xC00000CC"),
    (SMBOSError(0xC000003A, r"\\h\s\d\f"), PathError, Alert.PATH, "0xC000003A"),
    (SMBOSError(0xC0000034, r"\\h\s\f"), PathError, Alert.PATH, "0xC0000034"),
    (wrapped(socket.gaierror(socket.EAI_NONAME, "unknown")), PathError, Alert.PATH, "EAI_NONAME"),
    (response_exception(0xC000007F), CapacityError, Alert.CAPACITY, "0xC000007F"),
    (response_exception(0xC0000044), CapacityError, Alert.CAPACITY, "0xC0000044"),
    (
        wrapped(ConnectionRefusedError(errno.ECONNREFUSED, "refused")),
        ConnectivityError,
        Alert.CONNECTIVITY,
        "ECONNREFUSED",
    ),
    (
        wrapped(TimeoutError(errno.ETIMEDOUT, "timed out")),
        ConnectivityError,
        Alert.CONNECTIVITY,
        "ETIMEDOUT",
    ),
    (
        ConnectionResetError(errno.ECONNRESET, "reset"),
        ConnectivityError,
        Alert.CONNECTIVITY,
        "ECONNRESET",
    ),
    (SMBConnectionClosed("closed"), ConnectivityError, Alert.CONNECTIVITY, "SMBConnectionClosed"),
    (response_exception(0xC000020D), ConnectivityError, Alert.CONNECTIVITY, "0xC000020D"),
    (SMBOSError(0xC0000043, r"\\h\s\f"), GeneralFault, Alert.GENERAL, "0xC0000043"),
    (
        SMBException("Connection timeout of 60 seconds exceeded while waiting for a message"),
        ConnectivityError,
        Alert.CONNECTIVITY,
        "ETIMEDOUT",
    ),
    (RuntimeError("something else"), GeneralFault, Alert.GENERAL, "RuntimeError"),
]


@pytest.mark.parametrize(
    ("raised", "kind", "alert", "status"),
    MAPPING,
    ids=[f"{type(m[0]).__name__}-{m[3]}" for m in MAPPING],
)
def test_each_smbprotocol_failure_maps_to_one_error_and_alert(
    raised: BaseException, kind: type[InfraBackupError], alert: Alert, status: str | None
) -> None:
    error = translate_smb_error(raised, "writing MASBackup/x.bin", TARGET)
    assert_classified(error, kind, alert, status)
    assert error.retryable is (kind in (ConnectivityError, GeneralFault))
    assert "writing MASBackup/x.bin" in error.message
    assert TARGET.host in error.message


def test_the_mapped_exceptions_are_what_smbprotocol_raises() -> None:
    # The table above builds exceptions by hand; make sure they are the real classes the
    # library raises for those statuses (its registry picks a subclass per status).
    assert type(response_exception(0xC000006D)).__name__ == "LogonFailure"
    assert type(response_exception(0xC000007F)).__name__ == "DiskFull"
    assert type(response_exception(0xC00000CC)).__name__ == "BadNetworkName"


# ---- credentials, names, paths -------------------------------------------------------------


@pytest.mark.parametrize(
    ("username", "password"),
    [("backupuser", "not-the-password"), ("nosuchuser", PASSWORD)],
    ids=["wrong-password", "unknown-user"],
)
def test_bad_credentials_are_an_authentication_fault_and_not_retried(
    samba: SambaSet,
    folder: str,
    username: str,
    password: str,
) -> None:
    share = open_share(
        samba.settings("plain", folder, username=username, password=password), backoff=2.0
    )
    started = time.monotonic()
    with pytest.raises(AuthenticationError) as caught:
        share.write_stream("x.bin", [b"data"])
    assert time.monotonic() - started < 1.5, "a permanent fault must not be retried"
    assert_classified(caught.value, AuthenticationError, Alert.AUTHENTICATION, "0xC000006D")
    assert password not in str(caught.value) and password not in repr(share)
    assert username in str(caught.value)
    share.close()


@pytest.mark.parametrize(
    "credentials",
    [{}, {"BACKUP_SHARE_USERNAME": "backupuser"}],
    ids=["no-credentials", "no-password"],
)
def test_missing_credentials_are_an_authentication_fault(
    samba: SambaSet,
    credentials: dict[str, str],
) -> None:
    env = {
        "BACKUP_SHARE_PATH": r"\\127.0.0.1\plain",
        "BACKUP_SHARE_PORT": str(samba.main.port),
        **credentials,
    }
    share = SmbShare.from_settings(load_settings(env))
    with pytest.raises(AuthenticationError) as caught:
        share.list_dir("")
    assert_classified(caught.value, AuthenticationError, Alert.AUTHENTICATION, None)
    assert caught.value.status == "SMBAuthenticationError"
    assert "BACKUP_SHARE_PASSWORD" in str(caught.value)
    share.close()


def test_a_missing_share_is_a_path_fault(samba: SambaSet) -> None:
    share = open_share(samba.settings("NoSuchShare"))
    with pytest.raises(PathError) as caught:
        share.list_dir("")
    assert_classified(caught.value, PathError, Alert.PATH, "0xC0000225")
    assert "NoSuchShare" in str(caught.value)
    share.close()


def test_a_missing_base_folder_is_a_path_fault_for_every_operation(
    samba: SambaSet,
) -> None:
    share = open_share(samba.settings("plain", "no-such-folder"))
    with pytest.raises(PathError) as listing:
        share.list_dir("")
    assert_classified(listing.value, PathError, Alert.PATH, "0xC0000034")
    with pytest.raises(PathError):
        share.write_stream("MASBackup/x.bin", [b"x"])
    with pytest.raises(PathError):
        share.make_dirs("MASBackup")
    with pytest.raises(PathError):
        share.stat("MASBackup")  # "nothing there" must not hide a wrong BACKUP_SHARE_PATH
    assert not samba.share_dir("plain").joinpath("no-such-folder").exists()
    share.close()


def test_an_unresolvable_host_name_is_a_path_fault(samba: SambaSet) -> None:
    share = open_share(samba.settings("plain", host="fileserver.nowhere.invalid"))
    with pytest.raises(PathError) as caught:
        share.capacity()
    assert_classified(caught.value, PathError, Alert.PATH, None)
    assert str(caught.value.status).startswith("EAI_")
    assert "fileserver.nowhere.invalid" in str(caught.value)
    share.close()


def test_a_closed_port_is_a_connectivity_fault_retried_with_backoff(
    samba: SambaSet,
) -> None:
    share = open_share(samba.settings("plain", port=free_port()), backoff=0.2)
    started = time.monotonic()
    with pytest.raises(ConnectivityError) as caught:
        share.list_dir("")
    elapsed = time.monotonic() - started
    assert_classified(caught.value, ConnectivityError, Alert.CONNECTIVITY, "ECONNREFUSED")
    assert caught.value.retryable
    assert elapsed >= 0.2 + 0.4 + 0.8, "3 retries with exponential backoff"
    assert elapsed < 5
    share.close()


def test_a_transient_outage_is_bridged_by_the_retries(samba_victim: SambaServer) -> None:
    share = open_share(samba_victim.settings("plain"), backoff=0.5)
    share.write_stream("before.bin", [b"before"])
    samba_victim.kill()
    restarter = threading.Timer(0.8, samba_victim.start)
    restarter.start()
    try:
        names = {e.name for e in share.list_dir("")}  # refused at first, then retried
    finally:
        restarter.join()
    assert names == {"before.bin"}
    share.close()


# ---- capacity and permissions --------------------------------------------------------------


def test_disk_full_is_a_capacity_fault_and_leaves_no_partial_file(
    samba: SambaSet,
) -> None:
    samba.empty_small()
    share = open_share(samba.settings("small"))
    share.write_stream("earlier.bin", [b"an earlier backup"])
    with pytest.raises(CapacityError) as caught:
        share.write_stream("too-big.bin", (os.urandom(MiB) for _ in range(10)))
    assert_classified(caught.value, CapacityError, Alert.CAPACITY, "0xC000007F")
    assert not caught.value.retryable
    # Seen through SMB: the tmpfs is visible to smbd only.
    assert {e.name for e in share.list_dir("")} == {"earlier.bin"}, "no partial file left"
    assert share.stat("too-big.bin") is None
    # The fault is gone once the partial is: with the partial still there, a tmpfs share
    # would still be full and this write would fail.
    assert share.write_stream("fits.bin", (os.urandom(MiB) for _ in range(4))) == 4 * MiB
    assert b"".join(share.read_stream("earlier.bin")) == b"an earlier backup"
    if samba.small_mode == "tmpfs":
        assert share.capacity().total_bytes == SMALL_SHARE_BYTES
    share.remove("fits.bin")
    share.remove("earlier.bin")
    share.close()


def test_a_read_only_share_is_an_authentication_fault(samba: SambaSet) -> None:
    samba.share_dir("readonly").joinpath("existing.txt").write_bytes(b"readable")
    share = open_share(samba.settings("readonly"))
    assert "existing.txt" in {e.name for e in share.list_dir("")}  # reading works
    with pytest.raises(AuthenticationError) as caught:
        share.write_stream("x.bin", [b"x"])
    assert_classified(caught.value, AuthenticationError, Alert.AUTHENTICATION, "0xC0000022")
    assert "access denied" in str(caught.value)
    with pytest.raises(AuthenticationError):
        share.make_dirs("MASBackup")
    assert sorted(p.name for p in samba.share_dir("readonly").iterdir()) == ["existing.txt"]
    share.close()


# ---- the server dies or hangs in the middle of a write -------------------------------------


def stream_with_fault(total_mib: int, at_mib: int, fault: object) -> Iterator[bytes]:
    """``total_mib`` MiB of data; ``fault()`` is called after ``at_mib`` MiB were yielded."""
    for i in range(total_mib):
        if i == at_mib:
            fault()  # type: ignore[operator]
        yield os.urandom(MiB)


def test_smbd_killed_mid_write_is_a_connectivity_fault(samba_victim: SambaServer) -> None:
    share = open_share(samba_victim.settings("plain", timeout=TIMEOUT), backoff=0.1)
    earlier = os.urandom(2 * MiB)
    share.write_stream("earlier.bin", [earlier])
    killed_at: list[float] = []

    def kill() -> None:
        samba_victim.kill()
        killed_at.append(time.monotonic())

    with pytest.raises(ConnectivityError) as caught:
        share.write_stream("new.bin", stream_with_fault(40, 20, kill))
    assert time.monotonic() - killed_at[0] < TIMEOUT, "a dropped connection fails at once"
    assert_classified(caught.value, ConnectivityError, Alert.CONNECTIVITY, None)
    assert caught.value.status in ("SMBConnectionClosed", "ECONNRESET", "EPIPE")

    samba_victim.start()
    backing = samba_victim.share_dir("plain")
    # The server was gone, so the partial could not be removed; it is recognisable for prune.
    assert not (backing / "new.bin").exists()
    assert all(name.startswith(".new.bin" + PARTIAL_MARKER) for name in partials(backing))
    assert share.write_stream("new.bin", [b"after the restart"]) == len(b"after the restart")
    assert b"".join(share.read_stream("earlier.bin")) == earlier
    share.close()


def test_a_connection_reset_mid_write_removes_the_partial_when_the_server_is_up(
    samba_victim: SambaServer,
) -> None:
    share = open_share(samba_victim.settings("plain", timeout=TIMEOUT), backoff=0.1)
    killed: list[int] = []

    def reset() -> None:
        killed.append(samba_victim.kill_connections())

    with pytest.raises(ConnectivityError) as caught:
        share.write_stream("new.bin", stream_with_fault(40, 20, reset))
    assert killed == [1]
    assert_classified(caught.value, ConnectivityError, Alert.CONNECTIVITY, None)
    backing = samba_victim.share_dir("plain")
    assert partials(backing) == [], "the server was reachable: the partial must be removed"
    assert not (backing / "new.bin").exists()
    assert share.write_stream("new.bin", [b"second try"]) == 10
    share.close()


def test_a_read_survives_a_connection_reset_by_reopening_at_the_same_offset(
    samba_victim: SambaServer,
) -> None:
    share = open_share(samba_victim.settings("plain", timeout=TIMEOUT), backoff=0.1)
    data = os.urandom(12 * MiB)
    share.write_stream("data.bin", [data])
    received = bytearray()
    for index, chunk in enumerate(share.read_stream("data.bin", chunk_size=MiB)):
        received += chunk
        if index == 4:
            assert samba_victim.kill_connections() == 1
    assert bytes(received) == data
    share.close()


def test_smbd_frozen_mid_write_ends_as_a_connectivity_fault_within_the_deadline(
    samba_victim: SambaServer,
) -> None:
    share = open_share(samba_victim.settings("plain", timeout=TIMEOUT))
    earlier = os.urandom(2 * MiB)
    share.write_stream("earlier.bin", [earlier])
    frozen_at: list[float] = []

    def freeze() -> None:
        samba_victim.freeze()
        frozen_at.append(time.monotonic())

    with pytest.raises(ConnectivityError) as caught:
        share.write_stream("new.bin", stream_with_fault(48, 20, freeze))
    elapsed = time.monotonic() - frozen_at[0]
    assert TIMEOUT * 0.9 <= elapsed < 2 * TIMEOUT, f"took {elapsed:.1f} s"
    assert_classified(caught.value, ConnectivityError, Alert.CONNECTIVITY, TIMED_OUT)
    assert "made no progress" in str(caught.value)

    samba_victim.thaw()
    backing = samba_victim.share_dir("plain")
    assert not (backing / "new.bin").exists()
    assert all(PARTIAL_MARKER in name for name in partials(backing))
    assert share.write_stream("new.bin", [b"after the thaw"]) == len(b"after the thaw")
    assert b"".join(share.read_stream("earlier.bin")) == earlier
    share.close()


def test_a_frozen_server_cannot_hang_connecting_either(samba_victim: SambaServer) -> None:
    share = open_share(samba_victim.settings("plain", timeout=2), retries=0)
    samba_victim.freeze()
    started = time.monotonic()
    try:
        with pytest.raises(ConnectivityError) as caught:
            share.list_dir("")
        assert time.monotonic() - started < 2 * 2
        assert caught.value.status == TIMED_OUT
    finally:
        samba_victim.thaw()
    assert share.list_dir("") == []
    share.close()


# ---- signing and encryption ------------------------------------------------------------------


def session_of(share: SmbShare) -> object:
    connection = next(iter(share._cache.values()))
    assert connection.require_signing
    return next(iter(connection.session_table.values()))


@pytest.mark.parametrize("share_name", ["plain", "encrypted"])
def test_encryption_is_used_when_the_server_offers_it(
    samba: SambaSet,
    folder: str,
    share_name: str,
) -> None:
    share = open_share(samba.settings(share_name))
    share.list_dir("")
    assert session_of(share).encrypt_data is True  # type: ignore[attr-defined]
    share.close()


def test_without_encryption_on_offer_the_session_is_signed(samba_noenc: SambaServer) -> None:
    share = open_share(samba_noenc.settings("plain"))
    assert share.write_stream("x.bin", [b"signed"]) == 6
    session = session_of(share)
    assert session.encrypt_data is False  # type: ignore[attr-defined]
    assert session.signing_required is True  # type: ignore[attr-defined]
    share.close()


def test_required_encryption_refuses_a_server_that_does_not_offer_it(
    samba_noenc: SambaServer,
) -> None:
    share = open_share(samba_noenc.settings("plain", require_encryption=True))
    with pytest.raises(AuthenticationError) as caught:
        share.write_stream("refused.bin", [b"secret"])
    assert_classified(caught.value, AuthenticationError, Alert.AUTHENTICATION, None)
    assert caught.value.status == "ENCRYPTION_NOT_OFFERED"
    assert "does not offer SMB 3 encryption" in str(caught.value)
    assert "BACKUP_SHARE_REQUIRE_ENCRYPTION" in str(caught.value)
    assert not (samba_noenc.share_dir("plain") / "refused.bin").exists()
    share.close()


def test_required_encryption_works_with_a_server_that_offers_it(
    samba: SambaSet,
    folder: str,
) -> None:
    share = open_share(samba.settings("plain", folder, require_encryption=True))
    assert share.write_stream("x.bin", [b"secret"]) == 6
    assert session_of(share).encrypt_data is True  # type: ignore[attr-defined]
    share.close()


def test_the_description_and_repr_carry_no_password(samba: SambaSet) -> None:
    share = open_share(samba.settings("plain", "sub"))
    assert share.description == r"\\127.0.0.1\plain\sub"
    assert PASSWORD not in repr(share) and PASSWORD not in share.description
    share.close()
