"""Overlapping stages of a stream: a bounded read-ahead in a worker thread, and the one
re-chunker (:class:`Cutter`, :func:`records`).

``prefetch(chunks, depth)`` runs the producing iterator (read → tar → compress → encrypt)
in a thread while the caller consumes (writes to the share), so CPU work and network
waits overlap. At most ``depth`` items wait in between, so memory stays bounded by
``depth`` × the item size whatever the stream's length.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_DONE = object()
_POLL_SECONDS = 0.2

#: What the re-chunker takes (a view of any of them).
Buffer = bytes | bytearray | memoryview


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def prefetch(items: Iterable[T], depth: int = 8, name: str = "prefetch") -> Iterator[T]:
    """Yield ``items`` as produced by a worker thread, at most ``depth`` ahead.

    An exception in the producer is re-raised in the consumer at the point it occurred in
    the stream. When the consumer stops early (an error while writing, or ``close()``),
    the producer is told to stop and its iterator is closed in its own thread.
    """
    if depth < 1:
        yield from items
        return
    buffer: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        iterator = iter(items)
        try:
            for item in iterator:
                if not _put(buffer, stop, item):
                    return
            _put(buffer, stop, _DONE)
        except BaseException as exc:  # handed to the consumer, raised there
            _put(buffer, stop, _Failure(exc))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    worker = threading.Thread(target=produce, name=name, daemon=True)
    worker.start()
    try:
        while True:
            item = buffer.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        worker.join()


def _put(buffer: queue.Queue[object], stop: threading.Event, item: object) -> bool:
    """Put ``item`` unless the consumer stopped first; whether it was put."""
    while not stop.is_set():
        try:
            buffer.put(item, timeout=_POLL_SECONDS)
            return True
        except queue.Full:
            continue
    return False


class Cutter:
    """The one re-chunker: a stream of buffers, taken ``n`` bytes at a time as lists of
    views into them (no copies). The SMB pipe sends the views as they are (scatter-gather);
    :func:`records` joins only what spans buffers."""

    def __init__(self, chunks: Iterable[Buffer]) -> None:
        self._chunks = iter(chunks)
        self._front: deque[memoryview] = deque()

    def take(self, size: int) -> tuple[list[memoryview], int]:
        pieces: list[memoryview] = []
        have = 0
        while have < size:
            if self._front:
                view = self._front.popleft()
            else:
                chunk = next(self._chunks, None)
                if chunk is None:
                    break
                view = memoryview(chunk).cast("B")
                if not view:
                    continue
            take = min(len(view), size - have)
            pieces.append(view[:take])
            if take < len(view):
                self._front.appendleft(view[take:])
            have += take
        return pieces, have

    def give_back(self, pieces: list[memoryview], keep: int) -> list[memoryview]:
        """Keep the first ``keep`` bytes of ``pieces``; the rest is taken again next."""
        kept: list[memoryview] = []
        back: list[memoryview] = []
        for view in pieces:
            if keep >= len(view):
                kept.append(view)
                keep -= len(view)
            elif keep > 0:
                kept.append(view[:keep])
                back.append(view[keep:])
                keep = 0
            else:
                back.append(view)
        self._front.extendleft(reversed(back))
        return kept


def records(chunks: Iterable[Buffer], size: int, *, empty_tail: bool = False
            ) -> Iterator[bytes | memoryview]:
    """Exact ``size``-byte records, then the remainder (also when empty if ``empty_tail``).

    A record that lies inside one chunk is a view into it (no copy); only a record that
    spans chunks is gathered into a buffer of its own. The cipher takes any bytes-like
    object, so each byte is copied at most once on its way from the chunks to it.
    """
    cutter = Cutter(chunks)
    while True:
        pieces, have = cutter.take(size)
        if have or empty_tail:
            yield pieces[0] if len(pieces) == 1 else b"".join(pieces)
        if have < size:
            return
