"""The fast data path: pipelined READ and WRITE requests beside smbprotocol.

smbprotocol does everything else on a connection (negotiate, session setup, tree connect,
create, flush, close, metadata); its file object sends one request at a time and copies each
2 MiB request several times while it packs and signs it. Here the data requests are framed
by :mod:`.wire`, sent with ``sendmsg`` straight from the caller's buffers, and several are
kept in flight within the server's credits:

* **Receiving.** :class:`Wire` takes the place of the connection's ``transport.recv`` in
  smbprotocol's receiver thread (:func:`._compat.intercept_receive`). It reads each message
  header first; the answers to our requests are handled right there (a READ's data is read
  with ``recv_into`` into its own buffer, the one copy from the kernel), every other message
  is handed on to smbprotocol unchanged.
* **Trust.** Every answer is checked before anything of it is used: in a signed session the
  SIGNED flag is required on every final answer and its signature verified (smbprotocol
  only checks when the flag is present, so ours are checked for smbprotocol's messages
  too); in an encrypted session every final answer must arrive encrypted and authenticate.
  Only ``STATUS_PENDING`` interim answers, which servers send unsigned, are exempt: they
  carry credits and nothing else. A failure drops the connection (MS-SMB2 3.2.5.1.3) and is
  a ConnectivityError with status ``BAD_SIGNATURE`` (``BAD_ENCRYPTION``).
* **Credits.** A request is sent only when the server has granted the credits it costs
  (one per 64 KiB). Each request asks for enough back to keep :data:`PIPELINE_DEPTH`
  requests of full size in flight; when nothing is in flight and the window is still too
  small, an ECHO asks for more, and a server that grants fewer than a full request costs
  gets smaller requests. Request sizes never exceed the negotiated max read/write size.
* **Deadlines.** Sends use ``MSG_DONTWAIT`` and wait for the socket with the share's
  timeout; answers are waited for with the same timeout. When it passes, the share's abort
  shuts the connection down (which wakes every waiter) and the caller gets the share's
  ConnectivityError ``ETIMEDOUT``. A dropped connection fails every waiting request at once.
"""

from __future__ import annotations

import contextlib
import errno
import select
import socket
import struct
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Final

from smbprotocol.connection import Connection
from smbprotocol.exceptions import SMBConnectionClosed

from infrabackup.errors import GeneralFault, InfraBackupError
from infrabackup.share.smb import _compat
from infrabackup.share.smb.status import WireStatusError
from infrabackup.share.smb.wire import (
    AES_128_CCM,
    DIALECT_3_1_1,
    FLAG_ASYNC,
    FLAG_DFS,
    FLAG_RESPONSE,
    FLAG_SIGNED,
    HEADER,
    HEADER_SIZE,
    READ_REQUEST,
    READ_RESPONSE,
    SMB2_MAGIC,
    SMB2_READ,
    SMB2_SESSION_SETUP,
    SMB2_WRITE,
    STATUS_PENDING,
    STATUS_SUCCESS,
    TRANSFORM_MAGIC,
    TRANSFORM_SIZE,
    UNSOLICITED,
    WRITE_COUNT,
    WRITE_DATA_OFFSET,
    WRITE_REQUEST,
    ZERO_SIGNATURE,
    BadSignature,
    BadTransform,
    Buffer,
    Transform,
    credit_charge,
    sign,
    signing_algorithm,
    verify,
)
from infrabackup.stream.chunks import Cutter

#: Requests kept in flight on one open file, within the server's credits.
PIPELINE_DEPTH: Final = 4
#: Bytes per WRITE request. 1 MiB: smbd needs markedly less CPU per GiB for 1 MiB WRITEs than
#: for 2 MiB ones (docs/SMB.md), and on two shared cores its CPU is our throughput.
WRITE_SIZE: Final = 1024 * 1024
#: Bytes per READ request (and per chunk ``read`` yields).
READ_SIZE: Final = 2 * 1024 * 1024
#: The most credits one request asks for (Samba's default ``smb2 max credits`` is 8192).
MAX_CREDIT_REQUEST: Final = 8192
#: How often a waiter checks that the receiver thread still runs.
_POLL_SECONDS: Final = 0.5
#: Header + READ response body: what is read of every message before routing it.
_PEEK: Final = HEADER_SIZE + READ_RESPONSE.size
_EOF_ERRNOS: Final = frozenset({errno.ESHUTDOWN, errno.ECONNRESET, errno.ECONNABORTED})

_WIRES: weakref.WeakKeyDictionary[Connection, Wire] = weakref.WeakKeyDictionary()


class _Slot:
    """One request in flight: filled in by the receiver thread, waited for by the caller."""

    __slots__ = ("command", "count", "data", "done", "error", "length", "message_id")

    def __init__(self, message_id: int, command: int, length: int) -> None:
        self.message_id = message_id
        self.command = command
        self.length = length
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.count = 0
        self.data: bytes | bytearray | None = None


class Wire:
    """One connection's fast path: its receiver, its requests in flight, its sends."""

    def __init__(self, connection: Connection) -> None:
        sock = _compat.socket_of(connection)
        if sock is None:
            raise SMBConnectionClosed("the connection is not connected")
        self.connection = connection
        self.transport = connection.transport
        self.sock = sock
        self.close_lock = _compat.close_lock(connection)
        self.send_lock = _compat.send_lock(connection)
        self.multi_credit = bool(connection.supports_multi_credit)
        self.slots: dict[int, _Slot] = {}
        self.lock = threading.Lock()
        #: Why the connection was dropped by us (a bad signature), for the waiters.
        self.failure: BaseException | None = None
        self._transforms: dict[int, Transform] = {}
        _compat.intercept_receive(connection, self.recv)
        _WIRES[connection] = self

    @staticmethod
    def of(connection: Connection) -> Wire | None:
        """The wire attached to ``connection`` (see :func:`attach`), if any."""
        return _WIRES.get(connection)

    # ---- sessions -----------------------------------------------------------------------

    def transform(self, session: Any) -> Transform:
        """The encryption state of ``session`` (one nonce counter per session key)."""
        found = self._transforms.get(session.session_id)
        if found is None:
            connection = self.connection
            cipher = (connection.cipher_id if connection.dialect >= DIALECT_3_1_1
                      else AES_128_CCM)
            found = Transform(int(cipher), session.encryption_key, session.decryption_key,
                              session.session_id)
            self._transforms[session.session_id] = found
        return found

    def _signer(self, session_id: int) -> tuple[int, bytes] | None:
        """(algorithm, key) answers of ``session_id`` must be signed with, or None."""
        session = self.connection.session_table.get(session_id)
        if session is None or not session.signing_key or not session.signing_required:
            return None
        algorithm = signing_algorithm(self.connection.dialect,
                                      self.connection.signing_algorithm_id)
        return algorithm, session.signing_key

    def _encrypted_session(self, session_id: int) -> Any:
        session = self.connection.session_table.get(session_id)
        return session if session is not None and session.encrypt_data else None

    # ---- sending (caller threads) ----------------------------------------------------------

    def register(self, slot: _Slot) -> None:
        with self.lock:
            if self.failure is not None:
                raise self.failure
            self.slots[slot.message_id] = slot

    def send(self, buffers: Sequence[Buffer], timeout: float) -> bool:
        """Send one message; False if the socket accepted nothing new for ``timeout`` s."""
        views = [memoryview(b).cast("B") for b in buffers]
        deadline = time.monotonic() + timeout
        if not self.send_lock.acquire(timeout=timeout):
            return False
        try:
            while views:
                try:
                    sent = self.sock.sendmsg(views, (), socket.MSG_DONTWAIT)
                except BlockingIOError:
                    sent = 0
                if sent:
                    deadline = time.monotonic() + timeout  # progress: the deadline restarts
                while sent:
                    if sent >= len(views[0]):
                        sent -= len(views.pop(0))
                    else:
                        views[0] = views[0][sent:]
                        sent = 0
                if not views:
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                select.select([], [self.sock], [], left)
            return True
        finally:
            self.send_lock.release()

    def alive(self) -> bool:
        return self.failure is None and _compat.worker_alive(self.connection)

    def fail_all(self, exc: BaseException) -> None:
        """Complete every waiting request with ``exc`` (the connection is gone)."""
        with self.lock:
            slots, self.slots = list(self.slots.values()), {}
        for slot in slots:
            slot.error = exc
            slot.done.set()

    def abort(self, exc: BaseException) -> None:
        """Drop the connection because of ``exc``: every waiter gets it."""
        with self.lock:
            if self.failure is None:
                self.failure = exc
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.fail_all(exc)

    # ---- receiving (smbprotocol's receiver thread) ---------------------------------------

    def recv(self, timeout: float) -> bytes:
        """The next message that is not ours, for smbprotocol; b"" when the connection ends.

        Raises TimeoutError when nothing arrives for ``timeout`` seconds (smbprotocol then
        sends a keep-alive ECHO), exactly as the ``Tcp.recv`` it replaces.
        """
        while True:
            try:
                length = self._frame_length(timeout)
                if length is None:
                    return self._ended(SMBConnectionClosed("the server closed the connection"))
                message = self._message(length)
            except TimeoutError:
                raise
            except (BadSignature, BadTransform) as exc:
                return self._ended(exc)
            except Exception as exc:  # never into smbprotocol's thread: it would log a trace
                return self._ended(exc)
            if message is not None:
                return message

    def _ended(self, exc: BaseException) -> bytes:
        self.abort(exc)
        with contextlib.suppress(Exception):
            self.transport.close()
        return b""

    def _frame_length(self, timeout: float) -> int | None:
        """The Direct TCP length of the next message (after up to ``timeout`` idle)."""
        head = bytearray(4)
        with self.close_lock:
            if not self.transport.connected:
                return None
            ready = select.select([self.sock], [], [], max(timeout, 1))[0]
            if not ready:
                raise TimeoutError(f"recv idle for {timeout:.0f}s")
        if not self._fill(memoryview(head)):
            return None
        return int(struct.unpack(">I", head)[0])

    def _fill(self, view: memoryview) -> bool:
        """Read exactly ``len(view)`` bytes into ``view``; False at end of stream."""
        got, want = 0, len(view)
        while got < want:
            with self.close_lock:
                if not self.transport.connected:
                    return False
                try:
                    count = self.sock.recv_into(view[got:])
                except OSError as exc:
                    if exc.errno not in _EOF_ERRNOS:
                        raise
                    count = 0
            if count == 0:
                return False
            got += count
        return True

    def _read(self, size: int) -> bytearray:
        buffer = bytearray(size)
        if size and not self._fill(memoryview(buffer)):
            raise SMBConnectionClosed("the server closed the connection")
        return buffer

    def _take(self, size: int) -> bytes:
        """``size`` bytes in one fresh bytes object (a payload: one copy from the kernel,
        no zero-filled buffer first)."""
        if not size:
            return b""
        with self.close_lock:
            if not self.transport.connected:
                raise SMBConnectionClosed("the connection was closed")
            try:
                data = self.sock.recv(size, socket.MSG_WAITALL)
            except OSError as exc:
                if exc.errno not in _EOF_ERRNOS:
                    raise
                data = b""
        if len(data) == size:
            return data
        if not data:
            raise SMBConnectionClosed("the server closed the connection")
        return data + bytes(self._read(size - len(data)))  # interrupted: rare

    def _message(self, length: int) -> bytes | None:
        peek = self._read(min(length, 4))
        if peek[:4] == TRANSFORM_MAGIC and length >= TRANSFORM_SIZE:
            return self._encrypted(peek + self._read(TRANSFORM_SIZE - 4), length)
        peek += self._read(min(length, _PEEK) - len(peek))
        if peek[:4] != SMB2_MAGIC or len(peek) < HEADER_SIZE:
            raise BadSignature("not an SMB2 message")
        fields = HEADER.unpack_from(peek, 0)
        status, command, credits, flags = fields[3], fields[4], fields[5], fields[6]
        next_command, message_id, session_id = fields[7], fields[8], fields[11]
        slot = self.slots.get(message_id) if next_command == 0 else None
        if slot is None or not flags & FLAG_RESPONSE or command != slot.command:
            message = bytes(peek + self._read(length - len(peek)))
            self._check_theirs(message)
            return message
        interim = status == STATUS_PENDING and flags & FLAG_ASYNC
        if not interim and self._encrypted_session(session_id) is not None:
            raise BadTransform(f"message {message_id}: unencrypted in an encrypted session")
        signer = None if interim else self._signer(session_id)
        view = memoryview(peek)
        if command == SMB2_READ and status == STATUS_SUCCESS and len(peek) == _PEEK:
            _, data_offset, _, data_length, _, _ = READ_RESPONSE.unpack_from(peek, HEADER_SIZE)
            trailer = length - data_offset - data_length
            if data_offset < _PEEK or trailer < 0:
                raise BadSignature(f"message {message_id}: malformed READ response")
            pad = self._take(data_offset - _PEEK)
            data = self._take(data_length)
            tail = self._take(trailer)
            if signer is not None:
                verify(*signer, view, (pad, data, tail))
            self._grant(credits)
            self._complete(slot, status, data=data)
            return None
        rest = self._read(length - len(peek))
        if signer is not None:
            verify(*signer, view, (rest,))
        self._grant(credits)
        if interim:
            return None  # the final answer follows; this one only granted credits
        body = bytes(peek[HEADER_SIZE:] + rest)
        self._complete(slot, status, body=body)
        return None

    def _encrypted(self, peek: bytearray, length: int) -> bytes | None:
        """An encrypted message whose transform header is ``peek`` (52 bytes)."""
        if length < TRANSFORM_SIZE + HEADER_SIZE:
            raise BadTransform("encrypted message too short")
        body = self._take(length - TRANSFORM_SIZE)
        transform_header = memoryview(peek)[:TRANSFORM_SIZE]
        session_id = struct.unpack_from("<Q", peek, 44)[0]
        # Any session with keys: a share may require encryption where the session does not.
        session = self.connection.session_table.get(session_id)
        if session is None or not session.decryption_key:
            return bytes(peek[:TRANSFORM_SIZE]) + bytes(body)  # smbprotocol will say why
        transform = self.transform(session)
        head_size = min(len(body), _PEEK)
        state, head = transform.open_head(transform_header, memoryview(body), head_size)
        fields = HEADER.unpack_from(head, 0)
        status, command, credits, flags = fields[3], fields[4], fields[5], fields[6]
        next_command, message_id = fields[7], fields[8]
        slot = self.slots.get(message_id) if next_command == 0 else None
        if slot is None or not flags & FLAG_RESPONSE or command != slot.command:
            return bytes(peek[:TRANSFORM_SIZE]) + bytes(body)  # smbprotocol decrypts it
        rest = len(body) - head_size
        if command == SMB2_READ and status == STATUS_SUCCESS and head_size == _PEEK:
            _, data_offset, _, data_length, _, _ = READ_RESPONSE.unpack_from(head, HEADER_SIZE)
            start, end = data_offset - _PEEK, data_offset - _PEEK + data_length
            if start < 0 or end > rest:
                raise BadTransform(f"message {message_id}: malformed READ response")
            pieces = transform.open_rest(state, memoryview(body), head_size,
                                         [(0, start), (start, end), (end, rest)])
            self._grant(credits)
            self._complete(slot, status, data=pieces[1])
            return None
        (tail,) = transform.open_rest(state, memoryview(body), head_size, [(0, rest)])
        self._grant(credits)
        if status == STATUS_PENDING and flags & FLAG_ASYNC:
            return None
        self._complete(slot, status, body=bytes(head[HEADER_SIZE:]) + bytes(tail))
        return None

    def _check_theirs(self, message: bytes) -> None:
        """Require signed final answers of smbprotocol's messages in a signed session, and
        encrypted ones in an encrypted session (smbprotocol checks only flagged ones)."""
        view = memoryview(message)
        offset = 0
        while True:
            part = view[offset:]
            if len(part) < HEADER_SIZE or part[:4] != SMB2_MAGIC:
                raise BadSignature("not an SMB2 message")
            fields = HEADER.unpack_from(part, 0)
            status, command, flags = fields[3], fields[4], fields[6]
            next_command, message_id, session_id = fields[7], fields[8], fields[11]
            end = next_command or len(part)
            exempt = (
                message_id == UNSOLICITED
                or command == SMB2_SESSION_SETUP
                or (status == STATUS_PENDING and flags & FLAG_ASYNC)
            )
            if not exempt:
                if self._encrypted_session(session_id) is not None:
                    raise BadTransform(f"message {message_id}: unencrypted in an encrypted "
                                       "session")
                signer = self._signer(session_id)
                if signer is not None:
                    verify(*signer, part[:end])
            if not next_command:
                return
            offset += next_command

    def _grant(self, credits: int) -> None:
        _compat.grant_credits(self.connection, credits, self.multi_credit)

    def _complete(self, slot: _Slot, status: int, *, data: bytes | bytearray | None = None,
                  body: bytes = b"") -> None:
        with self.lock:
            self.slots.pop(slot.message_id, None)
        if status != STATUS_SUCCESS:
            slot.error = WireStatusError(status, "READ" if slot.command == SMB2_READ
                                         else "WRITE")
        elif slot.command == SMB2_READ:
            slot.data = data if data is not None else bytearray()
        elif len(body) >= 8:
            slot.count = int(WRITE_COUNT.unpack_from(body, 4)[0])
        else:
            slot.error = BadSignature(f"message {slot.message_id}: malformed WRITE response")
        slot.done.set()


def attach(connection: Connection) -> Wire:
    """Put the fast path's receiver on a freshly negotiated ``connection``."""
    return Wire.of(connection) or Wire(connection)


class FileChannel:
    """READs and WRITEs on one open file, up to ``depth`` in flight (module docstring).

    ``call(what, fn)`` runs an smbprotocol request under the share's deadline (for the
    ECHO that asks for credits); ``on_deadline(what)`` aborts the share's connection and
    returns its timeout error; ``translate(exc, what)`` maps a failure to the share's error.
    """

    def __init__(
        self,
        wire: Wire,
        open_: Any,
        what: str,
        *,
        timeout: float,
        call: Callable[[str, Callable[[], Any]], Any],
        on_deadline: Callable[[str], InfraBackupError],
        translate: Callable[[BaseException, str], InfraBackupError],
        depth: int = PIPELINE_DEPTH,
    ) -> None:
        tree = open_.tree_connect
        session = tree.session
        connection = wire.connection
        self.wire = wire
        self.connection = connection
        self.what = what
        self.timeout = timeout
        self.depth = depth
        self._call = call
        self._on_deadline = on_deadline
        self._translate = translate
        self.file_id: bytes = open_.file_id
        self.session_id: int = session.session_id
        self.tree_id: int = tree.tree_connect_id
        self.flags = FLAG_DFS if tree.is_dfs_share else 0
        encrypt = bool(session.encrypt_data or tree.encrypt_data)
        self.transform = wire.transform(session) if encrypt else None
        self.signer: tuple[int, bytes] | None = None
        if not encrypt and session.signing_required and session.signing_key:
            self.signer = (signing_algorithm(connection.dialect,
                                             connection.signing_algorithm_id),
                           session.signing_key)
        self.inflight: deque[_Slot] = deque()
        self._charges = 0  # credits of the requests in flight
        self._out = bytearray()  # ciphertext buffer of encrypted writes, reused

    # ---- credits ------------------------------------------------------------------------

    def _reserve(self, length: int, full: int, settle: Callable[[], None] | None
                 ) -> tuple[int, int, int] | None:
        """(message id, charge, length) for a request of up to ``length`` bytes.

        Waits for answers (``settle``) while the credits or the depth are exhausted; with
        nothing in flight, asks the server for credits and shrinks the request to what it
        granted. None when the caller must take an answer first (``settle`` is None).
        """
        multi = self.wire.multi_credit
        while True:
            charge = credit_charge(length, multi)
            if len(self.inflight) < self.depth:
                message_id = _compat.take_message_ids(self.connection, charge)
                if message_id is not None:
                    self._charges += max(charge, 1)
                    return message_id, charge, length
            if self.inflight:
                if settle is None:
                    return None
                settle()
                continue
            wanted = min(MAX_CREDIT_REQUEST, max(credit_charge(full, multi), 1) * self.depth)
            self._ask_credits(wanted)
            available = _compat.available_credits(self.connection)
            if available >= max(charge, 1):
                continue
            if available < 1 or not multi:
                raise GeneralFault(
                    f"{self.what}: the server grants no credits for further requests. Try "
                    "again; if it persists, call support.",
                    status="NO_CREDITS",
                )
            length = min(length, available * 65536)

    def _credit_request(self, charge: int, full: int) -> int:
        """Credits to ask with a request: its own charge, plus what the window lacks to
        hold ``depth`` full-size requests."""
        target = self.depth * max(credit_charge(full, self.wire.multi_credit), 1) + 1
        have = _compat.available_credits(self.connection) + self._charges
        return max(1, min(MAX_CREDIT_REQUEST, max(charge, 1) + max(0, target - have)))

    def _ask_credits(self, credits: int) -> None:
        connection, session_id = self.connection, self.session_id
        self._call(
            self.what,
            lambda: connection.echo(sid=session_id, timeout=max(1, int(self.timeout)),
                                    credit_request=credits),
        )

    # ---- requests -----------------------------------------------------------------------

    def _header(self, prefix: bytearray, command: int, charge: int, credits: int,
                message_id: int) -> None:
        flags = self.flags | (FLAG_SIGNED if self.signer is not None else 0)
        HEADER.pack_into(prefix, 4, SMB2_MAGIC, HEADER_SIZE, charge, 0, command, credits,
                         flags, 0, message_id, 0, self.tree_id, self.session_id,
                         ZERO_SIGNATURE)

    def _send(self, slot: _Slot, prefix: bytearray, payload: Sequence[Buffer],
              length: int) -> None:
        """Frame (sign or encrypt) and send one request whose header is in ``prefix[4:]``."""
        head = memoryview(prefix)[4:]
        if self.transform is not None:
            if len(self._out) < length + 16:
                self._out = bytearray(length + 16)
            buffers = self.transform.encrypt([head, *payload], length, self._out)
        else:
            struct.pack_into(">I", prefix, 0, length)
            if self.signer is not None:
                prefix[52:68] = sign(*self.signer, slot.message_id, False, [head, *payload])
            buffers = [prefix, *payload]
        try:
            self.wire.register(slot)
            sent = self.wire.send(buffers, self.timeout)
        except Exception as exc:  # a socket error, or the connection already dropped
            self.wire.abort(exc)
            raise self._translate(exc, self.what) from exc
        if not sent:
            raise self._on_deadline(self.what)
        self.inflight.append(slot)

    def _wait(self, slot: _Slot) -> _Slot:
        """The oldest request's answer, under the deadline; raises the share's error."""
        deadline = time.monotonic() + self.timeout
        while not slot.done.wait(min(_POLL_SECONDS, max(0.0, deadline - time.monotonic()))):
            if not self.wire.alive():
                self.wire.fail_all(self.wire.failure or SMBConnectionClosed(
                    "the connection's receiver stopped"))
            elif time.monotonic() >= deadline:
                raise self._on_deadline(self.what)
        if slot.error is not None:
            raise self._translate(slot.error, self.what) from slot.error
        return slot

    def _settle(self) -> _Slot:
        slot = self.inflight.popleft()
        charge = max(credit_charge(slot.length, self.wire.multi_credit), 1)
        self._charges -= charge
        return self._wait(slot)

    def drain(self) -> None:
        """Wait for every answer still due, ignoring their outcome (clean-up after an error)
        so that the server has finished with the file before it is closed and removed."""
        while self.inflight:
            try:
                self._settle()
            except InfraBackupError:
                self.inflight.clear()
                self._charges = 0

    # ---- the two streams ----------------------------------------------------------------

    def write(self, chunks: Iterable[Buffer], offset: int = 0) -> int:
        """Write ``chunks`` from ``offset``; the byte count the server confirmed.

        Exceptions raised by ``chunks`` itself propagate unchanged (after the requests in
        flight were answered).
        """
        full = min(WRITE_SIZE, int(self.connection.max_write_size or WRITE_SIZE))
        cutter = Cutter(chunks)
        written = 0

        def settle() -> None:
            nonlocal written
            slot = self._settle()
            if slot.count != slot.length:
                raise GeneralFault(
                    f"{self.what}: the server accepted {slot.count} of {slot.length} bytes. "
                    "Try again; if it persists, call support.",
                    status="SHORT_WRITE",
                )
            written += slot.count

        try:
            while True:
                pieces, length = cutter.take(full)
                if not length:
                    break
                reserved = self._reserve(length, full, settle)
                assert reserved is not None
                message_id, charge, fits = reserved
                if fits < length:
                    pieces = cutter.give_back(pieces, fits)
                    length = fits
                prefix = bytearray(4 + WRITE_DATA_OFFSET)
                self._header(prefix, SMB2_WRITE, charge, self._credit_request(charge, full),
                             message_id)
                WRITE_REQUEST.pack_into(prefix, 4 + HEADER_SIZE, 49, WRITE_DATA_OFFSET,
                                        length, offset, self.file_id, 0, 0, 0, 0, 0)
                self._send(_Slot(message_id, SMB2_WRITE, length), prefix, pieces,
                           WRITE_DATA_OFFSET + length)
                offset += length
            while self.inflight:
                settle()
        except BaseException:
            self.drain()
            raise
        return written

    def read(self, start: int, end: int, chunk_size: int) -> Iterator[bytes | bytearray]:
        """Yield the bytes ``start..end`` of the file in chunks of at most ``chunk_size``,
        each in a buffer of its own, ``depth`` requests ahead. GeneralFault SHORT_READ if
        the server returns less (the file shrank while it was read)."""
        full = min(chunk_size, READ_SIZE, int(self.connection.max_read_size or READ_SIZE))
        offset = start
        while True:
            while offset < end:
                reserved = self._reserve(min(full, end - offset), full, None)
                if reserved is None:
                    break
                message_id, charge, length = reserved
                prefix = bytearray(4 + HEADER_SIZE + READ_REQUEST.size)
                self._header(prefix, SMB2_READ, charge, self._credit_request(charge, full),
                             message_id)
                READ_REQUEST.pack_into(prefix, 4 + HEADER_SIZE, 49, 0x50, 0, length, offset,
                                       self.file_id, 0, 0, 0, 0, 0)
                self._send(_Slot(message_id, SMB2_READ, length), prefix, (),
                           HEADER_SIZE + READ_REQUEST.size)
                offset += length
            if not self.inflight:
                return
            slot = self._settle()
            data = slot.data if slot.data is not None else b""
            if len(data) != slot.length:
                raise GeneralFault(
                    f"{self.what}: the server returned {len(data)} of {slot.length} bytes; "
                    "the file changed while it was read.",
                    status="SHORT_READ",
                )
            yield data
