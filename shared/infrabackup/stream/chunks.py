"""Overlapping stages of a stream: a bounded read-ahead in a worker thread.

``prefetch(chunks, depth)`` runs the producing iterator (read → tar → compress → encrypt)
in a thread while the caller consumes (writes to the share), so CPU work and network
waits overlap. At most ``depth`` items wait in between, so memory stays bounded by
``depth`` × the item size whatever the stream's length.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_DONE = object()
_POLL_SECONDS = 0.2


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
