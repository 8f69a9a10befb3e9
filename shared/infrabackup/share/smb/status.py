"""NTSTATUS and socket failures -> :mod:`infrabackup.errors`: the one map of SMB faults to alerts.

:func:`translate_smb_error` is the only place smbprotocol's exceptions, socket errors and
the fast data path's :class:`WireStatusError` become :class:`~infrabackup.errors.InfraBackupError`
subclasses; ``.status`` keeps the NTSTATUS (``0xC000007F``) or the socket error's name.
The fault table as observed against Samba is in docs/SMB.md.
"""

from __future__ import annotations

import errno as errno_mod
import socket
from dataclasses import dataclass
from typing import Final

import spnego.exceptions
from smbprotocol.exceptions import (
    SMBAuthenticationError,
    SMBConnectionClosed,
    SMBException,
    SMBOSError,
    SMBResponseException,
)

from infrabackup.errors import (
    AuthenticationError,
    CapacityError,
    ConnectivityError,
    GeneralFault,
    InfraBackupError,
    PathError,
)
from infrabackup.share.smb.wire import BadSignature, BadTransform

# NTSTATUS codes (MS-ERREF 2.3.1), grouped by the alert they mean.
STATUS_ACCESS_DENIED: Final = 0xC0000022
STATUS_LOGON_FAILURE: Final = 0xC000006D
STATUS_OBJECT_NAME_NOT_FOUND: Final = 0xC0000034
STATUS_OBJECT_NAME_COLLISION: Final = 0xC0000035
STATUS_OBJECT_PATH_NOT_FOUND: Final = 0xC000003A
STATUS_SHARING_VIOLATION: Final = 0xC0000043
STATUS_DISK_FULL: Final = 0xC000007F
STATUS_BAD_NETWORK_NAME: Final = 0xC00000CC
STATUS_NOT_FOUND: Final = 0xC0000225
STATUS_NOT_SUPPORTED: Final = 0xC00000BB
_LOCK_CONFLICT = frozenset({0xC0000055, 0xC0000054})  # LOCK_NOT_GRANTED, FILE_LOCK_CONFLICT

_NOT_FOUND = frozenset({STATUS_OBJECT_NAME_NOT_FOUND, STATUS_OBJECT_PATH_NOT_FOUND})
_SHARE_MISSING = frozenset({STATUS_BAD_NETWORK_NAME, STATUS_NOT_FOUND, 0xC00000BE})
_LOGON_FAILED = frozenset(
    {
        STATUS_LOGON_FAILURE,
        0xC000006A,  # WRONG_PASSWORD
        0xC0000064,  # NO_SUCH_USER
        0xC000006E,  # ACCOUNT_RESTRICTION
        0xC000006F,  # INVALID_LOGON_HOURS
        0xC0000070,  # INVALID_WORKSTATION
        0xC0000071,  # PASSWORD_EXPIRED
        0xC0000072,  # ACCOUNT_DISABLED
        0xC0000193,  # ACCOUNT_EXPIRED
        0xC0000224,  # PASSWORD_MUST_CHANGE
        0xC0000234,  # ACCOUNT_LOCKED_OUT
        0xC000015B,  # LOGON_TYPE_NOT_GRANTED
        0xC000018D,  # TRUSTED_RELATIONSHIP_FAILURE
        0xC0000062,  # INVALID_ACCOUNT_NAME
    }
)
_ACCESS_DENIED = frozenset(
    {
        STATUS_ACCESS_DENIED,
        0xC0000061,  # PRIVILEGE_NOT_HELD
        0xC00000A2,  # MEDIA_WRITE_PROTECTED
    }
)
_PATH = frozenset(
    {
        *_NOT_FOUND,
        *_SHARE_MISSING,
        0xC0000033,  # OBJECT_NAME_INVALID
        0xC0000039,  # OBJECT_PATH_INVALID
        0xC000003B,  # OBJECT_PATH_SYNTAX_BAD
        0xC0000103,  # NOT_A_DIRECTORY
        0xC00000BA,  # FILE_IS_A_DIRECTORY
        0xC0000257,  # PATH_NOT_COVERED (DFS)
        0xC000026D,  # DFS_UNAVAILABLE
    }
)
_CAPACITY = frozenset(
    {
        STATUS_DISK_FULL,
        0xC0000044,  # QUOTA_EXCEEDED
        0xC0000904,  # FILE_TOO_LARGE
    }
)
_CONNECTIVITY = frozenset(
    {
        0xC00000B5,  # IO_TIMEOUT
        0xC00000C4,  # UNEXPECTED_NETWORK_ERROR
        0xC00000C9,  # NETWORK_NAME_DELETED
        0xC000013C,  # REMOTE_DISCONNECT
        0xC0000203,  # USER_SESSION_DELETED
        0xC000020C,  # CONNECTION_DISCONNECTED
        0xC000020D,  # CONNECTION_RESET
        0xC0000236,  # CONNECTION_REFUSED
        0xC000023C,  # NETWORK_UNREACHABLE
        0xC000023D,  # HOST_UNREACHABLE
        0xC0000241,  # CONNECTION_ABORTED
        0xC000035C,  # NETWORK_SESSION_EXPIRED
        0xC0000466,  # SERVER_UNAVAILABLE
    }
)


#: ``.status`` of the ConnectivityError raised when a request passed its deadline.
TIMED_OUT: Final = "ETIMEDOUT"


@dataclass(frozen=True)
class SmbTarget:
    """What an error message may name about the share: never the password."""

    host: str
    port: int
    share: str
    description: str
    username: str | None


def status_hex(code: int) -> str:
    """An NTSTATUS as Windows prints it: ``0xC000007F``."""
    return f"0x{code & 0xFFFFFFFF:08X}"


class WireStatusError(Exception):
    """An SMB response of the fast data path (:mod:`.pipe`) that carried a failure status."""

    def __init__(self, status: int, command: str) -> None:
        super().__init__(f"{command} answered {status_hex(status)}")
        self.status = status


def _ntstatus(exc: BaseException) -> int | None:
    if isinstance(exc, WireStatusError):
        return exc.status
    if isinstance(exc, SMBOSError):
        return int(exc.ntstatus)
    if isinstance(exc, SMBResponseException):
        return int(exc.status)
    return None


def _socket_cause(exc: BaseException) -> BaseException | None:
    """The socket-level exception behind ``exc`` (smbprotocol wraps them in ValueError)."""
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 5:
        if isinstance(current, OSError) and not isinstance(current, SMBOSError):
            return current
        current = current.__cause__ or current.__context__
        seen += 1
    return None


def translate_smb_error(exc: BaseException, what: str, target: SmbTarget) -> InfraBackupError:
    """The :mod:`infrabackup.errors` error that ``exc``, raised while doing ``what``, means.

    The one mapping from smbprotocol and socket exceptions to the five alerts::

        LogonFailure, SMBAuthenticationError, 0xC000006D...   -> AuthenticationError
        access denied 0xC0000022                              -> AuthenticationError
        share missing 0xC0000225/0xC00000CC, folder or file
        missing 0xC000003A/0xC0000034, name does not resolve  -> PathError
        DiskFull 0xC000007F, quota 0xC0000044                 -> CapacityError
        refused, reset, closed, timed out (socket errors,
        SMBConnectionClosed, 0xC000020C...)                   -> ConnectivityError
        anything else                                         -> GeneralFault

    ``what`` says what was being done ("writing MASBackup/x.bin"); the message adds where
    (the UNC path, the user name, never the password) and what the operator can do.
    """
    if isinstance(exc, InfraBackupError):
        return exc
    where = f"{target.description} (port {target.port})"
    user = target.username or "(no user name)"
    status = _ntstatus(exc)
    if status is not None:
        code = status_hex(status)
        if status in _LOGON_FAILED:
            return AuthenticationError(
                f"{what}: the server at {where} refused the logon of '{user}' ({code}: wrong "
                "user name or password, or the account is locked or disabled). Check "
                "BACKUP_SHARE_USERNAME and BACKUP_SHARE_PASSWORD; map the share from another "
                "computer with the same credentials to confirm them.",
                status=code,
            )
        if status in _ACCESS_DENIED:
            return AuthenticationError(
                f"{what}: access denied to '{user}' on {where} ({code}). Give this account "
                "read and write (change) permission on the share and its folders, or update "
                "the credentials if they are no longer valid.",
                status=code,
            )
        if status in _SHARE_MISSING:
            return PathError(
                f"{what}: the server {target.host} has no share named '{target.share}' "
                f"({code}). Check BACKUP_SHARE_PATH; map the share from another computer to "
                "confirm the path.",
                status=code,
            )
        if status in _PATH:
            return PathError(
                f"{what}: the path does not exist on {where} ({code}). Create the folder or "
                "correct BACKUP_SHARE_PATH.",
                status=code,
            )
        if status in _CAPACITY:
            return CapacityError(
                f"{what}: the share {target.description} is out of capacity ({code}: disk "
                "full or quota exceeded). Add storage capacity or delete existing backups, "
                "oldest first, then back up again.",
                status=code,
            )
        if status in _CONNECTIVITY:
            return ConnectivityError(
                f"{what}: the connection to {where} failed ({code}). Check the network "
                "between this service and the file server, and that the server is running.",
                status=code,
            )
        return GeneralFault(
            f"{what}: the server at {where} answered with an unexpected status {code} "
            f"({type(exc).__name__}). Try again; if it persists, call support.",
            status=code,
        )
    if isinstance(exc, SMBAuthenticationError | spnego.exceptions.SpnegoError):
        return AuthenticationError(
            f"{what}: authentication as '{user}' at {where} failed ({type(exc).__name__}). "
            "Check BACKUP_SHARE_USERNAME and BACKUP_SHARE_PASSWORD (both must be set).",
            status="SMBAuthenticationError",
        )
    if isinstance(exc, BadSignature | BadTransform):
        kind = "signature" if isinstance(exc, BadSignature) else "encryption"
        return ConnectivityError(
            f"{what}: an answer from {where} failed its {kind} check, so the connection "
            "was dropped: something on the network path altered it, or another machine "
            "answers in the server's name. Check the network path to the file server "
            "(proxies, WAN optimisers that rewrite SMB) and the server's identity.",
            status="BAD_SIGNATURE" if isinstance(exc, BadSignature) else "BAD_ENCRYPTION",
        )
    if isinstance(exc, SMBConnectionClosed):
        return ConnectivityError(
            f"{what}: the connection to {where} was closed by the server or the network. "
            "Check that the file server is running and reachable, then try again.",
            status="SMBConnectionClosed",
        )
    if isinstance(exc, SMBException) and str(exc).startswith("Connection timeout"):
        # smbprotocol's only own timeout (negotiation, echo) has no class of its own.
        return ConnectivityError(
            f"{what}: the server at {where} did not answer in time. Check that the file "
            "server is responsive and the network path to it is healthy.",
            status=TIMED_OUT,
        )
    cause = _socket_cause(exc)
    if isinstance(cause, socket.gaierror):
        return PathError(
            f"{what}: the host name '{target.host}' does not resolve ({cause.strerror}). "
            "Check BACKUP_SHARE_PATH and DNS; use the server's FQDN, or its IP address when "
            "names cannot be resolved.",
            status=_errno_name(cause.errno, "EAI"),
        )
    if isinstance(cause, OSError) and (
        isinstance(cause, ConnectionError | TimeoutError) or _is_network_errno(cause.errno)
    ):
        return ConnectivityError(
            f"{what}: cannot reach {where}: {cause.strerror or type(cause).__name__}. Check "
            "that the file server is running, the port is right (BACKUP_SHARE_PORT) and no "
            "firewall blocks it.",
            status=_errno_name(cause.errno, "E"),
        )
    return GeneralFault(
        f"{what}: unexpected failure talking to {where}: {type(exc).__name__}. Try again; if "
        "it persists, call support.",
        status=type(exc).__name__,
    )


def _errno_name(number: int | None, prefix: str) -> str:
    if number is None:
        return "unknown"
    if prefix == "EAI":
        for name in dir(socket):
            if name.startswith("EAI_") and getattr(socket, name) == number:
                return name
        return f"EAI_{number}"
    return errno_mod.errorcode.get(number, str(number))


def _is_network_errno(number: int | None) -> bool:
    return number in {
        errno_mod.ECONNREFUSED,
        errno_mod.ECONNRESET,
        errno_mod.ECONNABORTED,
        errno_mod.EPIPE,
        errno_mod.ETIMEDOUT,
        errno_mod.EHOSTUNREACH,
        errno_mod.ENETUNREACH,
        errno_mod.ENETDOWN,
        errno_mod.EHOSTDOWN,
        errno_mod.ESHUTDOWN,
        errno_mod.ENOTCONN,
        errno_mod.EBADF,  # the socket was closed under the request by an abort
    }


