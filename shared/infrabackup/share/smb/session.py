"""Connections, deadlines and retries of an SMB share (the base of :class:`SmbShare`).

* **Connections.** Each share has its own connection cache (never smbprotocol's
  process-wide one). A connection is made by :meth:`SmbSession._connect`: negotiate
  (signing required; encryption used when the server offers it, and a server that does not
  offer it refused before any credential is sent when it is required), then the fast data
  path's receiver is attached (:func:`.pipe.attach`), then the session is set up.
* **Deadlines.** smbprotocol has no request timeout: a frozen server hangs a call forever.
  Every smbprotocol request runs in a worker thread and the caller waits at most
  ``timeout`` seconds for it; when the deadline passes the connection's socket is shut down
  (which unblocks the worker) and the caller gets ConnectivityError ``ETIMEDOUT``. The fast
  data path (:mod:`.pipe`) keeps the same deadline per request without threads.
* **Retries.** Idempotent requests are retried by :class:`~infrabackup.share.retry.RetryPolicy`
  on a ConnectivityError, each time on a fresh connection.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import uuid
from collections.abc import Callable
from typing import Any, Final, TypeVar, cast

from smbprotocol.connection import Ciphers, Connection
from smbprotocol.session import Session

from infrabackup.errors import AuthenticationError, ConnectivityError, InfraBackupError
from infrabackup.settings import Secret, UncPath
from infrabackup.share.retry import RetryPolicy
from infrabackup.share.smb import _compat, pipe
from infrabackup.share.smb.status import TIMED_OUT, SmbTarget, translate_smb_error
from infrabackup.share.smb.wire import BadSignature, BadTransform

T = TypeVar("T")

#: Retries of an idempotent operation after a connectivity fault (so 1 + 3 attempts).
RETRIES: Final = 3
#: First backoff before a retry; doubled each time (0.5 s, 1 s, 2 s).
BACKOFF_SECONDS: Final = 0.5
#: How long a timed-out worker gets to unwind after its socket was shut down.
ABORT_GRACE_SECONDS: Final = 2.0


class SmbSession:
    """The connection side of an SMB share: its cache, the deadline and the retries.

    ``retries`` and ``backoff`` may be changed after construction (tests shorten them).
    """

    def __init__(
        self,
        unc: UncPath,
        *,
        port: int = 445,
        username: str | None = None,
        password: Secret | None = None,
        require_encryption: bool = False,
        timeout: float = 60.0,
        retries: int = RETRIES,
        backoff: float = BACKOFF_SECONDS,
    ) -> None:
        self.unc = unc
        self.port = port
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.require_encryption = require_encryption
        self.description = str(unc)
        self._username = username
        self._password = password
        self._key = f"{unc.host.lower()}:{port}"  # smbclient's connection-cache key
        self._target = SmbTarget(unc.host, port, unc.share, self.description, username)
        self._client_guid = uuid.uuid4()
        self._cache: dict[str, Connection] = {}
        self._session_lock = threading.Lock()
        #: The UNC path of the share's root folder (``\\host\share\folders``).
        self._root = "\\\\" + "\\".join((unc.host, unc.share, *unc.folders))
        #: The caches of held locks: each lock has a connection of its own.
        self._lock_caches: list[dict[str, Connection]] = []

    def _kwargs(self, cache: dict[str, Connection] | None = None) -> dict[str, Any]:
        """smbclient arguments: our own cache and port, our session (made by _connect)."""
        return {
            "username": self._username,
            "port": self.port,
            "connection_cache": self._cache if cache is None else cache,
            "connection_timeout": self.timeout,
        }

    def _connect(self, cache: dict[str, Connection]) -> Connection:
        """Ensure ``cache`` holds a live, authenticated connection to the server; return it.

        Encryption is decided here from what the server offered at negotiation: used when
        offered, and a server that does not offer it is refused when it is required -
        before the credentials are sent.
        """
        key = self._key
        with self._session_lock:
            connection = cache.get(key)
            if connection is not None and _usable(connection):
                return connection
            if connection is not None:
                _abort(connection)
            connection = Connection(
                self._client_guid, self.unc.host, self.port, require_signing=True
            )
            cache[key] = connection  # before connecting, so a deadline abort can find it
            try:
                connection.connect(
                    timeout=self.timeout,
                    preferred_encryption_algos=[
                        Ciphers.AES_256_GCM,
                        Ciphers.AES_128_GCM,
                        Ciphers.AES_256_CCM,
                        Ciphers.AES_128_CCM,
                    ],
                )
                offered = bool(connection.supports_encryption)
                if self.require_encryption and not offered:
                    raise AuthenticationError(
                        f"connecting to {self.description} (port {self.port}): the server does "
                        "not offer SMB 3 encryption, and BACKUP_SHARE_REQUIRE_ENCRYPTION is "
                        "true, so no credentials were sent. Enable SMB 3 encryption on the file "
                        "server (Windows: Set-SmbServerConfiguration -EncryptData $true; Samba: "
                        "server smb encrypt = desired) or set "
                        "BACKUP_SHARE_REQUIRE_ENCRYPTION=false.",
                        status="ENCRYPTION_NOT_OFFERED",
                    )
                pipe.attach(connection)  # before the first answer it must see
                session = Session(
                    connection,
                    username=self._username,
                    password=self._password.reveal() if self._password else None,
                    require_encryption=offered,
                )
                session.connect()
            except BaseException:
                cache.pop(key, None)
                _abort(connection)
                raise
            return connection

    def _call(
        self,
        what: str,
        fn: Callable[[], T],
        *,
        retry: bool = False,
        cache: dict[str, Connection] | None = None,
        connect: bool = True,
    ) -> T:
        """Run ``fn`` under the deadline (connecting first if ``connect``); translate; retry.

        Only ConnectivityError is retried (``retry`` must be set only for idempotent
        ``fn``); the connection is dropped before each retry so the next attempt starts a
        new one. ``connect=False`` is for requests on an open handle, which belong to the
        connection that opened them: a new connection could not serve them.
        """
        cache = self._cache if cache is None else cache
        if not retry:
            return self._run(what, fn, cache, connect)
        return self.retry_policy().call(
            what, lambda: self._run(what, fn, cache, connect),
            before_retry=lambda _exc: self._drop(cache),
        )

    def retry_policy(self) -> RetryPolicy:
        """The policy idempotent requests are retried with (``retries``, ``backoff``)."""
        return RetryPolicy(retries=self.retries, backoff=self.backoff)

    def _backoff_delay(self, attempt: int) -> float:
        return self.retry_policy().delay(attempt)

    def _run(
        self, what: str, fn: Callable[[], T], cache: dict[str, Connection], connect: bool
    ) -> T:
        """One attempt of ``fn`` in a worker thread, waited for at most ``timeout`` seconds.

        smbprotocol blocks without limit on a silent server; the worker thread lets the
        caller stop waiting, and shutting the socket down makes the worker's blocked send
        or receive fail, so it does not linger or touch the next connection.
        """
        outcome: list[Any] = []
        used: list[Connection] = []
        done = threading.Event()

        def work() -> None:
            try:
                connection = self._connect(cache) if connect else cache.get(self._key)
                if connection is not None:
                    used.append(connection)
                try:
                    outcome.append((True, fn()))
                except BaseException as exc:
                    if connect and cache.get(self._key) is not connection:
                        # Our connection died during the call and smbclient made its own
                        # (without our password or encryption policy); whatever that one
                        # raised, the fault is the dropped connection.
                        dropped = ConnectivityError(
                            f"{what}: the connection to {self.description} (port {self.port}) "
                            "dropped during the request. Check that the file server is "
                            "running and reachable.",
                            status="SMBConnectionClosed",
                        )
                        dropped.__cause__ = exc
                        exc = dropped
                    raise exc
            except BaseException as exc:  # handed to the caller's thread
                outcome.append((False, exc))
            finally:
                done.set()

        worker = threading.Thread(target=work, name=f"smb: {what}", daemon=True)
        worker.start()
        if not done.wait(self.timeout):
            timed_out = self._timed_out(what, cache)
            done.wait(ABORT_GRACE_SECONDS)
            raise timed_out
        ok, value = outcome[0]
        if ok:
            return cast(T, value)
        if isinstance(value, InfraBackupError):
            raise value
        # A connection our receiver dropped (a tampered answer) says why, not just "closed".
        failure = _wire_failure(used)
        cause = failure if isinstance(failure, BadSignature | BadTransform) else value
        error = translate_smb_error(cause, what, self._target)
        raise error from value

    def _timed_out(self, what: str, cache: dict[str, Connection]) -> ConnectivityError:
        """Abort ``cache``'s connections after a missed deadline; the error to raise."""
        self._drop(cache)
        return ConnectivityError(
            f"{what}: the server at {self.description} (port {self.port}) made no "
            f"progress for {self.timeout:g} s (BACKUP_SHARE_TIMEOUT_SECONDS); the "
            "connection was closed. Check that the file server is responsive and the "
            "network path to it is healthy.",
            status=TIMED_OUT,
        )

    def _translate(self, exc: BaseException, what: str) -> InfraBackupError:
        if isinstance(exc, InfraBackupError):
            return exc
        return translate_smb_error(exc, what, self._target)

    def _drop(self, cache: dict[str, Connection]) -> None:
        """Forget the connections of ``cache`` without talking to the server.

        Takes no lock: an abandoned worker may hold the session lock while it hangs.
        """
        for connection in list(cache.values()):
            _abort(connection)
        cache.clear()

    def _disconnect(self, cache: dict[str, Connection]) -> None:
        """Log off and close ``cache``'s connections, at most one deadline; never raises."""
        connections = list(cache.values())
        cache.clear()
        for connection in connections:
            if connection.transport is None or not connection.transport.connected:
                _abort(connection)
                continue
            done = threading.Event()

            def bye(connection: Connection = connection, done: threading.Event = done) -> None:
                with contextlib.suppress(Exception):
                    connection.disconnect(close=True, timeout=self.timeout)
                done.set()

            threading.Thread(target=bye, name="smb: disconnect", daemon=True).start()
            if not done.wait(self.timeout):
                _abort(connection)


def _usable(connection: Connection) -> bool:
    transport = connection.transport
    return bool(transport is not None and transport.connected and connection.session_table)


def _abort(connection: Connection) -> None:
    """Shut the connection's socket down without any lock or request.

    ``Tcp.close`` takes a lock that a send blocked on a full socket buffer holds forever,
    so the socket itself is shut down: the blocked send fails, the receiver thread sees
    end-of-file and wakes every waiting request with SMBConnectionClosed.
    """
    sock = _compat.socket_of(connection)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)



def _wire_failure(connections: list[Connection]) -> BaseException | None:
    for connection in connections:
        wire = pipe.Wire.of(connection)
        if wire is not None and wire.failure is not None:
            return wire.failure
    return None
