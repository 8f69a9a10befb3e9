"""A man in the middle for SMB tests: a TCP proxy in front of a real Samba that can alter
the server's answers (the one thing no real server does on request).

Client → server bytes pass unchanged. Server → client bytes are cut into Direct TCP frames
(4-byte length, then the SMB2 message or its encrypted transform) and each frame is offered
to ``tamper(frame_number, frame) -> bytes | list[bytes]`` before it is forwarded (a list:
several frames, e.g. an interim answer inserted before the real one); the default forwards
it unchanged. Every frame's SMB2 header (when readable) is recorded in ``seen`` as
(command, status, flags, length), so a test can also assert what the server sent.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

Tamper = Callable[[int, bytearray], bytes | bytearray | list[bytes]]

SMB2_READ = 0x0008
SMB2_WRITE = 0x0009
SMB2_QUERY_DIRECTORY = 0x000E
FLAG_ASYNC = 0x2
FLAG_SIGNED = 0x8
STATUS_PENDING = 0x103


def header_of(frame: bytes | bytearray) -> tuple[int, int, int] | None:
    """(command, status, flags) of a plain SMB2 frame; None for an encrypted one."""
    if frame[:4] != b"\xfeSMB" or len(frame) < 64:
        return None
    status, command = struct.unpack_from("<IH", frame, 8)
    flags = struct.unpack_from("<I", frame, 16)[0]
    return command, status, flags


@dataclass
class TamperProxy:
    """Listens on 127.0.0.1:``port`` and forwards every connection to ``target_port``."""

    target_port: int
    tamper: Tamper | None = None
    port: int = 0
    seen: list[tuple[int, int, int, int]] = field(default_factory=list)
    frames: int = 0
    _listener: socket.socket | None = None
    _sockets: list[socket.socket] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> TamperProxy:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        self._listener = listener
        self.port = listener.getsockname()[1]
        threading.Thread(target=self._accept, name="tamper-accept", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.close()
        for sock in list(self._sockets):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target_port))
            self._sockets += [client, server]
            threading.Thread(target=self._upstream, args=(client, server), daemon=True).start()
            threading.Thread(target=self._downstream, args=(server, client),
                             daemon=True).start()

    @staticmethod
    def _upstream(client: socket.socket, server: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := client.recv(1 << 20):
                server.sendall(data)
        with contextlib.suppress(OSError):
            server.shutdown(socket.SHUT_WR)

    def _downstream(self, server: socket.socket, client: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while True:
                head = _exactly(server, 4)
                if head is None:
                    break
                frame = _exactly(server, struct.unpack(">I", head)[0])
                if frame is None:
                    break
                with self._lock:
                    number = self.frames
                    self.frames += 1
                    header = header_of(frame)
                    if header is not None:
                        self.seen.append((*header, len(frame)))
                out = self.tamper(number, frame) if self.tamper is not None else frame
                for piece in out if isinstance(out, list) else [out]:
                    client.sendall(struct.pack(">I", len(piece)) + bytes(piece))
        with contextlib.suppress(OSError):
            client.shutdown(socket.SHUT_WR)


def _exactly(sock: socket.socket, n: int) -> bytearray | None:
    buffer = bytearray(n)
    view = memoryview(buffer)
    got = 0
    while got < n:
        count = sock.recv_into(view[got:])
        if not count:
            return None
        got += count
    return buffer


def interim_for(frame: bytes | bytearray, async_id: int) -> bytes:
    """The unsigned STATUS_PENDING interim answer a server sends before ``frame`` (a final
    answer): same command and message id, ASYNC flag, no credits, an empty error body."""
    header = bytearray(frame[:64])
    struct.pack_into("<I", header, 8, STATUS_PENDING)
    struct.pack_into("<H", header, 14, 0)  # grants no credits: the server granted none
    flags = struct.unpack_from("<I", header, 16)[0]
    struct.pack_into("<I", header, 16, (flags | FLAG_ASYNC) & ~FLAG_SIGNED)
    struct.pack_into("<Q", header, 32, async_id)
    header[48:64] = bytes(16)
    return bytes(header) + struct.pack("<HBBI", 9, 0, 0, 0) + b"\0"
