"""The SMB fast data path (shared/infrabackup/share/smb/pipe.py, wire.py) against real Samba,
and its framing against smbprotocol's own implementation.

* framing: our signatures equal smbprotocol's for GMAC, CMAC and HMAC-SHA256; our
  encrypted messages decrypt with smbprotocol's code and its messages with ours;
* credits: a server that grants fewer credits than a 2 MiB request costs still gets every
  byte (smaller requests), where the old pipelined writer failed at once;
* trust: answers altered on the way (a flipped byte, a stripped SIGNED flag, a flipped
  ciphertext byte) are refused with ConnectivityError BAD_SIGNATURE / BAD_ENCRYPTION and
  never reach the caller, for the fast path's answers and for smbprotocol's alike;
  Samba's unsigned STATUS_PENDING interim answers are accepted and the signed final
  answer that follows is what counts.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator

import pytest
from smbprotocol.connection import Connection, Dialects, SigningAlgorithms
from smbprotocol.header import Commands

from infrabackup.errors import ConnectivityError
from infrabackup.share.smb import SmbShare, wire
from infrabackup.stream.chunks import Cutter
from tests.servers.samba import SambaServer, SambaVariants
from tests.servers.tamper import (
    FLAG_ASYNC,
    FLAG_SIGNED,
    SMB2_QUERY_DIRECTORY,
    SMB2_READ,
    SMB2_WRITE,
    STATUS_PENDING,
    TamperProxy,
    header_of,
    interim_for,
)

MiB = 1024 * 1024


# ---- framing, checked against smbprotocol ---------------------------------------------


def _connection(dialect: int, signing: int | None, cipher: int | None = None) -> Connection:
    connection = Connection(None, "server", 445)  # never connected: only its crypto is used
    connection.dialect = dialect
    connection.signing_algorithm_id = signing
    connection.cipher_id = cipher
    return connection


@pytest.mark.parametrize(
    ("dialect", "negotiated", "algorithm"),
    [
        (Dialects.SMB_3_1_1, SigningAlgorithms.AES_GMAC, wire.SIGN_AES_GMAC),
        (Dialects.SMB_3_1_1, SigningAlgorithms.AES_CMAC, wire.SIGN_AES_CMAC),
        (Dialects.SMB_3_0_2, None, wire.SIGN_AES_CMAC),
        (Dialects.SMB_2_1_0, None, wire.SIGN_HMAC_SHA256),
    ],
    ids=["3.1.1-gmac", "3.1.1-cmac", "3.0.2-cmac", "2.1-hmac"],
)
@pytest.mark.parametrize("response", [False, True], ids=["request", "response"])
def test_signatures_over_pieces_equal_smbprotocols(
    dialect: int, negotiated: int | None, algorithm: int, response: bool
) -> None:
    connection = _connection(dialect, negotiated)
    assert wire.signing_algorithm(dialect, negotiated) == algorithm
    key = os.urandom(16)
    message = bytearray(os.urandom(64 + 48 + 300_001))
    message[48:64] = os.urandom(16)  # whatever the field holds, it is signed as zeros
    expected = connection._generate_signature(bytes(message), key, 77, response,
                                              Commands.SMB2_WRITE)
    view = memoryview(message)
    pieces = [view[:48], wire.ZERO_SIGNATURE, view[64:1000], view[1000:]]
    assert wire.sign(algorithm, key, 77, response, pieces) == expected


@pytest.mark.parametrize("cipher", [wire.AES_128_GCM, wire.AES_256_GCM, wire.AES_128_CCM,
                                    wire.AES_256_CCM])
def test_our_transform_and_smbprotocols_read_each_other(cipher: int) -> None:
    key_size = 32 if cipher in (wire.AES_256_GCM, wire.AES_256_CCM) else 16
    ours, theirs = os.urandom(key_size), os.urandom(key_size)
    session = type("S", (), {"session_id": 0x1234, "encryption_key": theirs,
                             "decryption_key": ours})()
    connection = _connection(Dialects.SMB_3_1_1, None, cipher)
    connection.session_table[0x1234] = session
    plain = os.urandom(64 + 16 + 70_000)

    # ours -> smbprotocol (it decrypts with the session's decryption key)
    transform = wire.Transform(cipher, ours, theirs, 0x1234)
    view = memoryview(plain)
    buffers = transform.encrypt([view[:80], view[80:]], len(plain), bytearray(len(plain) + 16))
    framed = b"".join(bytes(b) for b in buffers)
    assert struct.unpack(">I", framed[:4])[0] == len(framed) - 4
    from smbprotocol.connection import SMB2TransformHeader

    header = SMB2TransformHeader()
    header.unpack(framed[4:])
    assert connection._decrypt(header) == plain

    # smbprotocol -> ours
    packed = connection._encrypt(plain, type("S", (), {"session_id": 0x1234,
                                                       "encryption_key": ours})()).pack()
    mine = wire.Transform(cipher, os.urandom(key_size), ours, 0x1234)
    body = memoryview(packed)[52:]
    state, head = mine.open_head(memoryview(packed)[:52], body, 80)
    assert head == plain[:80]
    rest = mine.open_rest(state, body, 80, [(0, 1000), (1000, len(plain) - 80)])
    assert head + b"".join(rest) == plain


def test_transform_nonces_never_repeat_and_tampering_is_refused() -> None:
    transform = wire.Transform(wire.AES_128_GCM, os.urandom(16), os.urandom(16), 1)
    nonces = {transform.nonces.next() for _ in range(10_000)}
    assert len(nonces) == 10_000
    peer = wire.Transform(wire.AES_128_GCM, os.urandom(16), transform.encryption_key, 1)
    plain = os.urandom(500)
    framed = bytearray(b"".join(bytes(b) for b in transform.encrypt([plain], 500,
                                                                     bytearray(516))))
    framed[4 + 52 + 100] ^= 1
    body = memoryview(framed)[56:]
    state, _ = peer.open_head(memoryview(framed)[4:56], body, 80)
    with pytest.raises(wire.BadTransform):
        peer.open_rest(state, body, 80, [(0, len(body) - 80)])


def test_the_cutter_takes_exact_requests_without_copying() -> None:
    chunks = [b"a" * 5, b"b" * 7, b"", b"c" * 3]
    cutter = Cutter(chunks)
    pieces, got = cutter.take(6)
    assert got == 6 and b"".join(pieces) == b"aaaaab"
    assert all(isinstance(p, memoryview) for p in pieces)
    kept = cutter.give_back(pieces, 4)
    assert b"".join(kept) == b"aaaa"
    pieces, got = cutter.take(100)
    assert b"".join(pieces) == b"ab" + b"b" * 6 + b"ccc" and got == 11
    assert cutter.take(10) == ([], 0)


@pytest.mark.parametrize(("length", "multi", "charge"),
                         [(1, True, 1), (65536, True, 1), (65537, True, 2),
                          (2 * MiB, True, 32), (2 * MiB, False, 0), (0, True, 1)])
def test_credit_charge(length: int, multi: bool, charge: int) -> None:
    assert wire.credit_charge(length, multi) == charge


# ---- credits against a real server ----------------------------------------------------


def test_a_server_granting_few_credits_gets_smaller_requests(
    samba_variants: SambaVariants,
) -> None:
    server = samba_variants("credits-16")  # a 2 MiB request costs 32 credits
    proxy = TamperProxy(server.port).start()
    share = SmbShare.from_settings(server.settings("plain", port=proxy.port))
    data = os.urandom(5 * MiB + 123)
    try:
        assert share.write_stream("few-credits.bin", [data]) == len(data)
        assert b"".join(share.read_stream("few-credits.bin")) == data
    finally:
        share.remove("few-credits.bin")
        share.close()
        proxy.stop()
    reads = [n for command, status, _, n in proxy.seen if command == SMB2_READ and not status]
    assert reads and max(reads) <= 16 * 65536 + 200, "READ answers fit 16 credits"


# ---- trust: signatures, encryption, interim answers -------------------------------------


@pytest.fixture
def signed(samba_noenc: SambaServer) -> Iterator[tuple[SambaServer, TamperProxy]]:
    """The signed-only (3.1.1, AES-GMAC) server behind a tampering proxy."""
    proxy = TamperProxy(samba_noenc.port).start()
    try:
        yield samba_noenc, proxy
    finally:
        proxy.stop()


def _share(server: SambaServer, proxy: TamperProxy, **kwargs: float) -> SmbShare:
    share = SmbShare.from_settings(server.settings("plain", port=proxy.port, timeout=5))
    share.retries = 0
    for name, value in kwargs.items():
        setattr(share, name, value)
    return share


class FlipData:
    """Flips one payload byte of ``command``'s successful answers (the first ``times``)."""

    def __init__(self, command: int, times: int | None = None) -> None:
        self.command, self.times, self.count = command, times, 0

    def __call__(self, _number: int, frame: bytearray) -> bytearray:
        header = header_of(frame)
        if (header is not None and header[0] == self.command and header[1] == 0
                and len(frame) > 4096 and (self.times is None or self.count < self.times)):
            frame[len(frame) // 2] ^= 0x40
            self.count += 1
        return frame


def test_unsigned_interim_answers_are_accepted_and_the_signed_final_answer_counts(
    signed: tuple[SambaServer, TamperProxy],
) -> None:
    """Samba answers slow writes (over 0.5 ms) with an unsigned STATUS_PENDING interim first;
    whether it does depends on the machine's speed, so the proxy adds one before every
    final READ and WRITE answer that came without, as a slower server would."""
    server, proxy = signed
    added: list[int] = []

    def add_interim(_number: int, frame: bytearray) -> bytearray | list[bytes]:
        header = header_of(frame)
        if (header is not None and header[0] in (SMB2_READ, SMB2_WRITE)
                and header[1] != STATUS_PENDING and not header[2] & FLAG_ASYNC):
            added.append(header[0])
            # the final answer must then carry the async id too: re-signing is impossible,
            # so only the interim is added and the final one stays a sync answer
            return [interim_for(frame, 0x4242 + len(added)), bytes(frame)]
        return frame

    proxy.tamper = add_interim
    share = _share(server, proxy)
    data = os.urandom(16 * MiB)
    try:
        assert share.write_stream("interim.bin", [data]) == len(data)
        assert b"".join(share.read_stream("interim.bin")) == data
    finally:
        proxy.tamper = None
        share.remove("interim.bin")
        share.close()
    samba_interim = [(c, f) for c, s, f, _ in proxy.seen if s == STATUS_PENDING]
    assert all(f & FLAG_ASYNC and not f & FLAG_SIGNED for _, f in samba_interim)
    assert {c for c, _ in samba_interim} | set(added) == {SMB2_READ, SMB2_WRITE}
    finals = [f for c, s, f, _ in proxy.seen if c in (SMB2_READ, SMB2_WRITE) and s == 0]
    assert finals and all(f & FLAG_SIGNED for f in finals)


def test_a_read_answer_with_a_flipped_byte_is_refused(
    signed: tuple[SambaServer, TamperProxy],
) -> None:
    server, proxy = signed
    share = _share(server, proxy)
    data = os.urandom(6 * MiB)
    share.write_stream("data.bin", [data])
    proxy.tamper = FlipData(SMB2_READ)
    received = bytearray()
    with pytest.raises(ConnectivityError) as caught:
        for chunk in share.read_stream("data.bin"):
            received += chunk
    assert caught.value.status == "BAD_SIGNATURE"
    assert "failed its signature check" in caught.value.message
    assert received == b"", "no byte of a tampered answer reaches the caller"
    proxy.tamper = None
    assert b"".join(share.read_stream("data.bin")) == data  # a new connection works
    share.remove("data.bin")
    share.close()


def test_a_read_retried_after_one_tampered_answer_returns_the_true_bytes(
    signed: tuple[SambaServer, TamperProxy],
) -> None:
    server, proxy = signed
    share = _share(server, proxy, retries=3, backoff=0.05)
    data = os.urandom(6 * MiB)
    share.write_stream("data.bin", [data])
    tamper = FlipData(SMB2_READ, times=1)
    proxy.tamper = tamper
    assert b"".join(share.read_stream("data.bin")) == data
    assert tamper.count == 1
    share.remove("data.bin")
    share.close()


def test_a_write_answer_without_its_signature_is_refused(
    signed: tuple[SambaServer, TamperProxy],
) -> None:
    server, proxy = signed
    share = _share(server, proxy)
    share.list_dir("")  # connected before the tampering starts

    def unsign(_number: int, frame: bytearray) -> bytearray:
        header = header_of(frame)
        if header is not None and header[0] == SMB2_WRITE and header[1] == 0:
            struct.pack_into("<I", frame, 16, header[2] & ~FLAG_SIGNED)
            frame[48:64] = bytes(16)
        return frame

    proxy.tamper = unsign
    with pytest.raises(ConnectivityError) as caught:
        share.write_stream("unsigned.bin", [os.urandom(3 * MiB)])
    assert caught.value.status == "BAD_SIGNATURE"
    proxy.tamper = None
    assert "unsigned.bin" not in {e.name for e in share.list_dir("")}
    share.close()


def test_a_tampered_answer_to_smbprotocols_own_request_is_refused_too(
    signed: tuple[SambaServer, TamperProxy],
) -> None:
    server, proxy = signed
    share = _share(server, proxy)
    share.list_dir("")

    def flip_listing(_number: int, frame: bytearray) -> bytearray:
        header = header_of(frame)
        if header is not None and header[0] == SMB2_QUERY_DIRECTORY and header[1] == 0:
            frame[-3] ^= 0x01
        return frame

    proxy.tamper = flip_listing
    with pytest.raises(ConnectivityError) as caught:
        share.list_dir("")
    assert caught.value.status == "BAD_SIGNATURE"
    share.close()


def test_an_encrypted_answer_with_a_flipped_byte_is_refused(
    samba_variants: SambaVariants,
) -> None:
    server = samba_variants("encrypted-3.0.2")  # AES-128-CCM; GCM is the contract's default
    proxy = TamperProxy(server.port).start()
    share = SmbShare.from_settings(server.settings("plain", port=proxy.port, timeout=5))
    share.retries = 0
    try:
        data = os.urandom(3 * MiB)
        share.write_stream("sealed.bin", [data])

        def flip(_number: int, frame: bytearray) -> bytearray:
            if frame[:4] == b"\xfdSMB" and len(frame) > MiB:
                frame[len(frame) // 2] ^= 0x01
            return frame

        proxy.tamper = flip
        with pytest.raises(ConnectivityError) as caught:
            b"".join(share.read_stream("sealed.bin"))
        assert caught.value.status == "BAD_ENCRYPTION"
        proxy.tamper = None
        share.remove("sealed.bin")
    finally:
        share.close()
        proxy.stop()
