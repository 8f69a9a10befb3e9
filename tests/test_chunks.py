"""Unit tests of the one re-chunker (stream/chunks.py): ``Cutter`` and ``records``.

No servers: bytes in, bytes out. Every byte must come out once and in order, every piece
no longer than asked, and only the last record short.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infrabackup.stream.chunks import Cutter, records


def _joined(parts: list[memoryview]) -> bytes:
    return b"".join(bytes(p) for p in parts)


def test_take_returns_exactly_size_bytes_across_chunk_boundaries() -> None:
    cutter = Cutter([b"abc", b"defg", b"h"])
    pieces, have = cutter.take(5)
    assert have == 5
    assert _joined(pieces) == b"abcde"
    assert [bytes(p) for p in pieces] == [b"abc", b"de"]  # views, split at the boundary


def test_take_keeps_the_rest_of_a_split_chunk_for_the_next_take() -> None:
    cutter = Cutter([b"abcdefgh"])
    assert _joined(cutter.take(3)[0]) == b"abc"
    assert _joined(cutter.take(3)[0]) == b"def"
    pieces, have = cutter.take(3)
    assert (_joined(pieces), have) == (b"gh", 2)
    assert cutter.take(3) == ([], 0)


def test_take_skips_empty_chunks() -> None:
    cutter = Cutter([b"", b"ab", b"", bytearray(b"c"), memoryview(b"")])
    pieces, have = cutter.take(10)
    assert (_joined(pieces), have) == (b"abc", 3)


def test_take_of_an_empty_stream_is_nothing() -> None:
    assert Cutter([]).take(4) == ([], 0)


def test_take_returns_views_not_copies() -> None:
    data = bytearray(b"0123456789")
    pieces, _ = Cutter([data]).take(4)
    data[0:1] = b"X"
    assert bytes(pieces[0]) == b"X123"


def test_give_back_keeps_the_first_bytes_and_returns_the_rest_first_in_line() -> None:
    cutter = Cutter([b"abc", b"def", b"ghi"])
    pieces, have = cutter.take(7)
    assert have == 7
    kept = cutter.give_back(pieces, 4)
    assert _joined(kept) == b"abcd"
    # What was given back ("efg") comes before what was never taken ("hi").
    rest, have = cutter.take(100)
    assert (_joined(rest), have) == (b"efghi", 5)


def test_give_back_of_everything_and_of_nothing() -> None:
    cutter = Cutter([b"abcdef"])
    pieces, _ = cutter.take(4)
    assert cutter.give_back(pieces, 0) == []
    pieces, _ = cutter.take(4)
    assert _joined(pieces) == b"abcd"
    assert _joined(cutter.give_back(pieces, 4)) == b"abcd"
    assert _joined(cutter.take(10)[0]) == b"ef"


def test_records_of_an_exact_multiple_has_no_short_tail() -> None:
    out = [bytes(r) for r in records([b"abcd", b"efgh"], 4)]
    assert out == [b"abcd", b"efgh"]


def test_records_of_an_exact_multiple_with_empty_tail_ends_with_an_empty_record() -> None:
    out = [bytes(r) for r in records([b"abcdefgh"], 4, empty_tail=True)]
    assert out == [b"abcd", b"efgh", b""]


def test_records_ends_with_the_short_remainder() -> None:
    out = [bytes(r) for r in records([b"abcdefghij"], 4)]
    assert out == [b"abcd", b"efgh", b"ij"]


def test_records_of_nothing() -> None:
    assert list(records([], 4)) == []
    assert list(records([b"", b""], 4)) == []
    assert [bytes(r) for r in records([], 4, empty_tail=True)] == [b""]


def test_records_of_one_byte_chunks_are_gathered() -> None:
    out = [bytes(r) for r in records([bytes([i]) for i in range(7)], 3)]
    assert out == [bytes([0, 1, 2]), bytes([3, 4, 5]), bytes([6])]


def test_records_of_one_byte_size() -> None:
    assert [bytes(r) for r in records([b"abc", b"d"], 1)] == [b"a", b"b", b"c", b"d"]


def test_records_inside_one_chunk_are_views_into_it() -> None:
    data = b"abcdefgh"
    first = next(iter(records([data], 4)))
    assert isinstance(first, memoryview)
    assert first.obj is data


@pytest.mark.parametrize("size", [1, 3, 512])
def test_records_of_a_multibyte_memoryview_are_counted_in_bytes(size: int) -> None:
    import array

    words = array.array("I", range(100))  # 4-byte items: the cutter must count bytes
    out = [bytes(r) for r in records([memoryview(words)], size)]
    assert b"".join(out) == words.tobytes()
    assert all(len(r) == size for r in out[:-1])


_CHUNKS = st.lists(st.binary(max_size=64), max_size=20)


@settings(max_examples=200, derandomize=True, database=None, deadline=None)
@given(chunks=_CHUNKS, size=st.integers(min_value=1, max_value=100), tail=st.booleans())
def test_records_keep_every_byte_in_order_in_size_byte_records(
        chunks: list[bytes], size: int, tail: bool) -> None:
    data = b"".join(chunks)
    out = [bytes(r) for r in records(chunks, size, empty_tail=tail)]
    assert b"".join(out) == data
    assert all(len(r) == size for r in out[:-1])
    if out:
        assert 0 < len(out[-1]) <= size or (tail and len(data) % size == 0 and out[-1] == b"")
    expected_count = len(data) // size + (1 if len(data) % size or tail else 0)
    assert len(out) == expected_count


@settings(max_examples=200, derandomize=True, database=None, deadline=None)
@given(chunks=_CHUNKS, plan=st.lists(st.tuples(st.integers(1, 50), st.integers(0, 50)),
                                     max_size=30))
def test_cutter_take_and_give_back_keep_every_byte_in_order(
        chunks: list[bytes], plan: list[tuple[int, int]]) -> None:
    data = b"".join(chunks)
    cutter = Cutter(chunks)
    out = bytearray()
    for size, keep in plan:
        pieces, have = cutter.take(size)
        assert have == sum(len(p) for p in pieces)
        assert have <= size
        assert have == min(size, len(data) - len(out))
        kept = cutter.give_back(pieces, min(keep, have))
        out += _joined(kept)
    rest, _ = cutter.take(len(data) + 1)
    out += _joined(rest)
    assert bytes(out) == data
