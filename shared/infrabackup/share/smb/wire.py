"""SMB2/3 framing for the fast data path: READ/WRITE headers, signatures, the transform.

Pure functions over buffers (no sockets, no threads), checked against smbprotocol's own
implementation in tests/test_smb_wire.py. Everything works over *pieces* (sequences of
bytes-like objects) so that a 2 MiB payload is signed, verified or encrypted where it lies,
never concatenated with its header:

* signing (MS-SMB2 3.1.4.1): AES-128-GMAC for 3.1.1 when negotiated, AES-128-CMAC for
  3.0.x (and 3.1.1 without a signing context), HMAC-SHA256 truncated to 16 bytes for 2.x;
  the signature field counts as zeros;
* encryption (MS-SMB2 3.1.4.3): a 52-byte TRANSFORM_HEADER, AES-128/256-GCM (12-byte nonce)
  or AES-128/256-CCM (11-byte nonce), authenticated data = transform header bytes 20..52.
  Nonces come from :class:`NonceSource`: a random prefix and a counter, so no nonce repeats
  under one session key however many messages are sent (smbprotocol itself draws random
  nonces for its own, small messages; a collision with a counter nonce is 2^-96-unlikely).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import threading
from collections.abc import Sequence
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import cmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESCCM

Buffer = bytes | bytearray | memoryview

#: SMB2 header (sync and async share the layout: the async id covers reserved + tree id).
HEADER: Final = struct.Struct("<4sHHIHHIIQIIQ16s")
#: WRITE request body without its buffer; the data follows at DATA_OFFSET.
WRITE_REQUEST: Final = struct.Struct("<HHIQ16sIIHHI")
#: READ request body (the one-byte buffer the structure size counts is appended as zero).
READ_REQUEST: Final = struct.Struct("<HBBIQ16sIIIHHx")
#: READ response body; the data starts DataOffset bytes from the header.
READ_RESPONSE: Final = struct.Struct("<HBBIII")
#: The WRITE response's Count field, at this offset from the header.
WRITE_COUNT: Final = struct.Struct("<I")
TRANSFORM: Final = struct.Struct("<4s16s16sIHHQ")
HEADER_SIZE: Final = 64
TRANSFORM_SIZE: Final = 52
WRITE_DATA_OFFSET: Final = HEADER_SIZE + WRITE_REQUEST.size  # 0x70
assert HEADER.size == 64 and WRITE_REQUEST.size == 48 and READ_REQUEST.size == 49
assert READ_RESPONSE.size == 16 and TRANSFORM.size == 52

SMB2_MAGIC: Final = b"\xfeSMB"
TRANSFORM_MAGIC: Final = b"\xfdSMB"
SMB2_SESSION_SETUP: Final = 0x0001
SMB2_READ: Final = 0x0008
SMB2_WRITE: Final = 0x0009
SMB2_CANCEL: Final = 0x000C
FLAG_RESPONSE: Final = 0x00000001
FLAG_ASYNC: Final = 0x00000002
FLAG_SIGNED: Final = 0x00000008
FLAG_DFS: Final = 0x10000000
STATUS_SUCCESS: Final = 0
STATUS_PENDING: Final = 0x00000103
UNSOLICITED: Final = 0xFFFFFFFFFFFFFFFF  # the message id of an oplock/lease break
#: Bytes of payload one credit pays for (MS-SMB2 3.1.5.2).
CREDIT_BYTES: Final = 65536
ZERO_SIGNATURE: Final = bytes(16)

# Dialects, signing algorithm ids and cipher ids, as negotiated (MS-SMB2 2.2.3/2.2.3.1).
DIALECT_3_0_0: Final = 0x0300
DIALECT_3_1_1: Final = 0x0311
SIGN_HMAC_SHA256: Final = 0
SIGN_AES_CMAC: Final = 1
SIGN_AES_GMAC: Final = 2
AES_128_CCM: Final = 1
AES_128_GCM: Final = 2
AES_256_CCM: Final = 3
AES_256_GCM: Final = 4
GCM_CIPHERS: Final = frozenset({AES_128_GCM, AES_256_GCM})


class BadSignature(Exception):
    """A response failed its signature, or a signed session's answer came unsigned."""


class BadTransform(Exception):
    """An encrypted response failed to decrypt or authenticate, or is malformed."""


def credit_charge(length: int, multi_credit: bool) -> int:
    """CreditCharge for a payload of ``length`` bytes (0 when multi-credit is off)."""
    if not multi_credit:
        return 0
    return max(0, length - 1) // CREDIT_BYTES + 1


def signing_algorithm(dialect: int, negotiated: int | None) -> int:
    """The algorithm a connection signs with, as smbprotocol chooses it."""
    if dialect >= DIALECT_3_1_1 and negotiated is not None:
        return negotiated
    if dialect >= DIALECT_3_0_0:
        return SIGN_AES_CMAC
    return SIGN_HMAC_SHA256


def sign(
    algorithm: int, key: bytes, message_id: int, response: bool, pieces: Sequence[Buffer],
    *, cancel: bool = False,
) -> bytes:
    """The 16-byte signature of a message given as pieces (its signature field zeroed)."""
    if algorithm == SIGN_AES_GMAC:
        info = (1 if response else 0) | (2 if cancel else 0)
        nonce = message_id.to_bytes(8, "little") + info.to_bytes(4, "little")
        gmac = Cipher(algorithms.AES(key), modes.GCM(nonce)).encryptor()
        for piece in pieces:
            gmac.authenticate_additional_data(piece)
        gmac.finalize()
        return gmac.tag
    if algorithm == SIGN_AES_CMAC:
        mac = cmac.CMAC(algorithms.AES(key))
        for piece in pieces:
            mac.update(piece)  # type: ignore[arg-type]  # any buffer works; the stub says bytes
        return mac.finalize()
    digest = hmac.new(key, digestmod=hashlib.sha256)
    for piece in pieces:
        digest.update(piece)
    return digest.digest()[:16]


def verify(
    algorithm: int, key: bytes, message: memoryview, rest: Sequence[Buffer] = (),
) -> None:
    """Check the signature of a response: its first 64 bytes are ``message[:64]``, the rest
    of it is ``message[64:]`` followed by ``rest``. Raises BadSignature."""
    fields = HEADER.unpack_from(message, 0)
    flags, message_id, signature = fields[6], fields[8], fields[12]
    command = fields[4]
    expected = sign(
        algorithm, key, message_id, True,
        (message[:48], ZERO_SIGNATURE, message[64:], *rest),
        cancel=command == SMB2_CANCEL,
    )
    if not flags & FLAG_SIGNED or not hmac.compare_digest(expected, signature):
        raise BadSignature(f"message {message_id}: signature check failed")


class NonceSource:
    """Unique nonces under one key: 4 random bytes, then a little-endian counter."""

    def __init__(self, length: int) -> None:
        self.length = length
        self._prefix = os.urandom(4)
        self._counter = 0
        self._lock = threading.Lock()

    def next(self) -> bytes:
        with self._lock:
            self._counter += 1
            count = self._counter
        return self._prefix + count.to_bytes(self.length - 4, "little")


class Transform:
    """SMB 3 encryption of one session: what goes out, what comes in."""

    def __init__(self, cipher_id: int, encryption_key: bytes, decryption_key: bytes,
                 session_id: int) -> None:
        self.gcm = cipher_id in GCM_CIPHERS
        self.nonce_length = 12 if self.gcm else 11
        self.encryption_key = encryption_key
        self.decryption_key = decryption_key
        self.session_id = session_id
        self.nonces = NonceSource(self.nonce_length)

    def encrypt(self, pieces: Sequence[Buffer], length: int, out: bytearray) -> list[Buffer]:
        """The framed, encrypted message (Direct TCP length + transform + ciphertext) for
        the plaintext ``pieces`` of ``length`` bytes, as buffers to send in order.

        GCM encrypts piece by piece into ``out`` (at least ``length + 16`` bytes, reused by
        the caller once the message is sent); CCM has no incremental interface, so its
        plaintext is gathered first.
        """
        nonce = self.nonces.next()
        prefix = bytearray(4 + TRANSFORM_SIZE)
        struct.pack_into(">I", prefix, 0, TRANSFORM_SIZE + length)
        TRANSFORM.pack_into(prefix, 4, TRANSFORM_MAGIC, ZERO_SIGNATURE,
                            nonce.ljust(16, b"\0"), length, 0, 1, self.session_id)
        aad = memoryview(prefix)[24:]
        if self.gcm:
            encryptor = Cipher(algorithms.AES(self.encryption_key), modes.GCM(nonce)).encryptor()
            encryptor.authenticate_additional_data(aad)
            view = memoryview(out)
            position = 0
            for piece in pieces:
                position += encryptor.update_into(piece, view[position:])
            encryptor.finalize()
            prefix[8:24] = encryptor.tag
            return [prefix, view[:position]]
        plain = b"".join(pieces)
        sealed = AESCCM(self.encryption_key).encrypt(nonce, plain, bytes(aad))
        prefix[8:24] = sealed[-16:]
        return [prefix, memoryview(sealed)[:-16]]

    def open_head(self, transform: memoryview, body: memoryview, head: int) -> tuple[object, bytes]:
        """Begin decrypting: (state, the first ``head`` plaintext bytes, unauthenticated).

        For routing only: nothing of a message may be trusted before :meth:`open_rest`.
        """
        _, tag, nonce, size, _, flags, session_id = TRANSFORM.unpack_from(transform, 0)
        if flags != 1 or session_id != self.session_id or size != len(body):
            raise BadTransform("malformed transform header")
        if not self.gcm:
            try:
                plain = AESCCM(self.decryption_key).decrypt(
                    nonce[: self.nonce_length], bytes(body) + tag, bytes(transform[20:52])
                )
            except InvalidTag:
                raise BadTransform("the encrypted message failed authentication") from None
            return plain, plain[:head]
        decryptor = Cipher(
            algorithms.AES(self.decryption_key), modes.GCM(nonce[: self.nonce_length], tag)
        ).decryptor()
        decryptor.authenticate_additional_data(transform[20:52])
        first = bytearray(head + 15)
        count = decryptor.update_into(body[:head], first)
        return decryptor, bytes(first[:count])

    def open_rest(self, state: object, body: memoryview, head: int,
                  outputs: Sequence[tuple[int, int]]) -> list[bytearray]:
        """Finish decrypting ``body[head:]``, authenticated; the plaintext ranges
        ``outputs`` ((start, end) pairs relative to ``head``, contiguous, covering it all),
        each in a buffer of its own. Raises BadTransform."""
        if isinstance(state, bytes):  # CCM: authenticated in open_head already
            return [bytearray(state[head + a: head + b]) for a, b in outputs]
        decryptor = state
        pieces: list[bytearray] = []
        try:
            for start, end in outputs:
                out = bytearray(end - start + 15)
                count = decryptor.update_into(body[head + start: head + end], out)  # type: ignore[attr-defined]
                del out[count:]
                pieces.append(out)
            decryptor.finalize()  # type: ignore[attr-defined]
        except InvalidTag:
            raise BadTransform("the encrypted message failed authentication") from None
        return pieces
