"""Compression of a component's plaintext before it is encrypted (zstd, level 1), and its
bounded decompression after it is authenticated. Which one a stream uses is in its header
(:mod:`infrabackup.stream.encryption`, docs/FORMAT.md)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import IO, cast

from infrabackup.errors import IntegrityError


def zstd_compress(chunks: Iterable[bytes]) -> Iterator[bytes]:
    import zstandard

    compressor = zstandard.ZstdCompressor(level=1).compressobj()
    for chunk in chunks:
        out = compressor.compress(chunk)
        if out:
            yield out
    yield compressor.flush()


def zstd_decompress(chunks: Iterable[bytes], component: str, piece_size: int
                    ) -> Iterator[bytes]:
    """Decompress with bounded output: a small authenticated segment must not be able to
    expand into gigabytes at once (read_to_iter yields at most ``piece_size`` bytes per
    item)."""
    import zstandard

    # read_to_iter only calls read(); the stub asks for a full IO.
    reader = cast("IO[bytes]", _ChunkFile(iter(chunks)))
    try:
        yield from zstandard.ZstdDecompressor().read_to_iter(
            reader, read_size=piece_size, write_size=piece_size
        )
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"{component}: compressed data is corrupt ({exc}).") from None


class _ChunkFile:
    """``read(n)`` over an iterator of byte chunks (what read_to_iter reads from)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = b""

    def read(self, size: int = -1) -> bytes:
        while not self._buffer:
            piece = next(self._chunks, None)
            if piece is None:
                return b""
            self._buffer = bytes(piece)
        out, self._buffer = self._buffer[:size], self._buffer[size:]
        return out
