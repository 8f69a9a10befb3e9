"""Every use of smbprotocol's private or undocumented internals, in one place.

smbprotocol is pinned to one exact version (requirements.txt and pyproject.toml) because of
what this module touches; when the pin moves, this is the file to re-read against the new
source. Nothing else in the project imports ``smbclient._io`` or reaches into a
``Connection``'s transport, worker thread or credit window.

What is used, and why:

* ``smbclient._io.SMBFileIO`` / ``SMBFileTransaction`` / ``query_info``: the file object
  ``smbclient.open_file(buffering=0)`` returns (its ``.fd`` is the public ``Open``), and the
  compound query an SMB source uses to describe an open file.
* ``Tcp._sock``, ``Tcp._sock_lock``, ``Tcp._close_lock``: the fast data path sends on the
  connection's socket itself (under the lock smbprotocol's own sends take, so messages never
  interleave) and receives with ``recv_into`` (under the lock ``Tcp.close`` waits for before
  it closes the descriptor); a deadline abort shuts the socket down without any lock.
* ``Tcp.recv``: smbprotocol's receiver thread calls ``connection.transport.recv(timeout)``
  afresh for every message; :func:`intercept_receive` puts our receiver there, which handles
  the fast path's answers and hands every other message on unchanged.
* ``Connection._t_worker``: whether that receiver thread is still alive.
* ``Connection.sequence_window`` / ``sequence_lock``: message ids and credits, shared with
  smbprotocol's own requests (taken and granted exactly as ``Connection._send`` and the
  receiver thread do).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from typing import Any

from smbclient._io import SMBFileIO, SMBFileTransaction, query_info
from smbprotocol.connection import Connection

__all__ = [
    "SMBFileIO",
    "SMBFileTransaction",
    "available_credits",
    "close_lock",
    "grant_credits",
    "intercept_receive",
    "query_info",
    "send_lock",
    "socket_of",
    "take_message_ids",
    "worker_alive",
]


def socket_of(connection: Connection) -> socket.socket | None:
    """The connection's TCP socket, or None before connect / after close."""
    transport = connection.transport
    sock = getattr(transport, "_sock", None) if transport is not None else None
    return sock if isinstance(sock, socket.socket) else None


def send_lock(connection: Connection) -> threading.Lock:
    """The lock smbprotocol holds while it writes one message to the socket."""
    return connection.transport._sock_lock


def close_lock(connection: Connection) -> threading.Lock:
    """The lock ``Tcp.close`` takes before closing the descriptor; held around each recv."""
    return connection.transport._close_lock


def intercept_receive(connection: Connection, recv: Callable[[float], bytes]) -> None:
    """Make smbprotocol's receiver thread call ``recv(timeout)`` for every next message.

    The thread looks ``transport.recv`` up again for each message, so the message it is
    waiting for right now still goes through the original; install this before the first
    request whose answer ``recv`` must see (right after negotiation).
    """
    connection.transport.recv = recv


def worker_alive(connection: Connection) -> bool:
    """Whether smbprotocol's receiver thread for ``connection`` still runs."""
    worker = connection._t_worker
    return bool(worker is not None and worker.is_alive())


def available_credits(connection: Connection) -> int:
    """Credits granted and not yet spent (smbprotocol's sequence window)."""
    window: dict[str, int] = connection.sequence_window
    return window["high"] - window["low"]


def take_message_ids(connection: Connection, charge: int) -> int | None:
    """Spend ``max(charge, 1)`` message ids; the first one, or None if too few credits.

    The same rule as ``Connection._send``: a request charged ``n`` credits consumes ``n``
    sequence numbers (one when the dialect has no multi-credit support, charge 0).
    """
    need = max(charge, 1)
    lock: Any = connection.sequence_lock
    with lock:
        window: dict[str, int] = connection.sequence_window
        if window["high"] - window["low"] < need:
            return None
        first = window["low"]
        window["low"] += need
        return first


def grant_credits(connection: Connection, credits: int, multi_credit: bool) -> None:
    """Add an answer's granted credits, as smbprotocol's receiver thread does."""
    if credits == 0 and not multi_credit:
        credits = 1  # SMB 2.0.2: every answer opens the window by one
    lock: Any = connection.sequence_lock
    with lock:
        connection.sequence_window["high"] += credits
