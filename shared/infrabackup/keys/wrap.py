"""Key material: the encryption certificate, the PFX, the legacy key, and data-key wrapping.

Backups are encrypted under a fresh data key (see :mod:`infrabackup.stream.encryption`). This module
wraps that key for the manifest and unwraps it again:

* certificate mode (1901 and newer): RSA-OAEP with SHA-256 (MGF1-SHA256, no label)
  under the certificate's public key; only the PFX's private key can unwrap it;
* legacy mode (1811 and older): AES-256-GCM under the symmetric
  ``BACKUP_ENCRYPTION_KEY``, with the backup id as associated data.

Neither the private key nor the unwrapped data key is ever written anywhere; both live
only in memory for the duration of one operation.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from infrabackup.errors import ConfigError, KeyMaterialError
from infrabackup.stream.encryption import DATA_KEY_BYTES

MIN_RSA_BITS = 2048
EXPIRY_WARNING_DAYS = 30
_OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
_LEGACY_AAD = b"infrabackup legacy wrap v1|"


def thumbprints(cert: x509.Certificate) -> tuple[str, str]:
    """(SHA-1, SHA-256) of the DER certificate in uppercase hex, as Windows shows them."""
    der = cert.public_bytes(serialization.Encoding.DER)
    return hashlib.sha1(der).hexdigest().upper(), hashlib.sha256(der).hexdigest().upper()


def parse_certificate(data: bytes, what: str) -> x509.Certificate:
    """A certificate from DER or PEM bytes; KeyMaterialError naming ``what`` if neither."""
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError:
        raise KeyMaterialError(
            f"{what} is not an X.509 certificate in DER or PEM form. Use the .cer file "
            "made by 'infrabackup keygen' or exported from the certificate store."
        ) from None


def read_key_file(setting: str, path: str, example: str) -> bytes:
    """The bytes of a key file named by ``setting``; ConfigError naming both if unreadable."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"{setting}: cannot read {path} ({exc.strerror}). Example: {example}.",
            setting=setting,
        ) from None


def load_certificate_file(path: str) -> x509.Certificate:
    """Read a ``.cer`` (DER or PEM) named by ``BACKUP_ENCRYPTION_CERT``."""
    data = read_key_file("BACKUP_ENCRYPTION_CERT", path, "/etc/infrabackup/backup.cer")
    return parse_certificate(data, f"BACKUP_ENCRYPTION_CERT: {path}")


def load_pfx(data: bytes, password: str | None, what: str) -> tuple[Any, x509.Certificate]:
    """(private key, certificate) from PKCS#12 bytes. Errors never include the password."""
    try:
        key, cert, _ = pkcs12.load_key_and_certificates(
            data, password.encode() if password else None
        )
    except ValueError:
        raise KeyMaterialError(
            f"{what} could not be opened: the password (BACKUP_DECRYPTION_CERT_PASSWORD) is "
            "wrong or the file is not a PFX."
        ) from None
    if key is None or cert is None:
        raise KeyMaterialError(f"{what} holds no private key and certificate pair.")
    if not isinstance(key, rsa.RSAPrivateKey):
        raise KeyMaterialError(f"{what}: the private key is not RSA.")
    return key, cert


def certificate_warnings(cert: x509.Certificate, now: dt.datetime) -> list[str]:
    """Expired / soon-to-expire notes; the certificate still works (it only wraps keys)."""
    not_after = cert.not_valid_after_utc
    sha1, _ = thumbprints(cert)
    if not_after <= now:
        return [f"The encryption certificate {sha1} expired on {not_after:%Y-%m-%d}; rotate it."]
    if not_after - now <= dt.timedelta(days=EXPIRY_WARNING_DAYS):
        return [
            f"The encryption certificate {sha1} expires on {not_after:%Y-%m-%d}; rotate it "
            "before then."
        ]
    return []


class KeyWrapper(Protocol):
    """Wraps a backup's data key. ``describe`` goes into the manifest's ``encryption``."""

    warnings: list[str]

    def wrap(self, data_key: bytes, backup_id: str) -> dict[str, Any]:
        """The manifest's ``encryption`` object, holding the wrapped key (base64)."""
        ...


@dataclass
class CertificateWrapper:
    """Certificate mode: RSA-OAEP-SHA256 under the certificate's public key."""

    certificate: x509.Certificate
    source: str
    warnings: list[str]

    def __post_init__(self) -> None:
        key = self.certificate.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            raise KeyMaterialError(f"{self.source}: the certificate's key is not RSA.")
        if key.key_size < MIN_RSA_BITS:
            raise KeyMaterialError(
                f"{self.source}: the certificate's RSA key has {key.key_size} bits; at least "
                f"{MIN_RSA_BITS} are required. Make a new one with 'infrabackup keygen'."
            )

    def wrap(self, data_key: bytes, backup_id: str) -> dict[str, Any]:
        public = self.certificate.public_key()
        assert isinstance(public, rsa.RSAPublicKey)
        sha1, sha256 = thumbprints(self.certificate)
        return {
            "mode": "certificate",
            "keyWrap": "RSA-OAEP-256",
            "wrappedKey": base64.b64encode(public.encrypt(data_key, _OAEP)).decode(),
            "thumbprint": sha1,
            "thumbprintSha256": sha256,
            "subject": self.certificate.subject.rfc4514_string(),
            "notAfter": self.certificate.not_valid_after_utc.isoformat(),
        }


@dataclass
class LegacyKeyWrapper:
    """Legacy mode (1811 and older): AES-256-GCM under the symmetric key."""

    key: bytes
    warnings: list[str]

    def wrap(self, data_key: bytes, backup_id: str) -> dict[str, Any]:
        nonce = os.urandom(12)
        wrapped = AESGCM(self.key).encrypt(nonce, data_key, _LEGACY_AAD + backup_id.encode())
        return {
            "mode": "legacyKey",
            "keyWrap": "A256GCM",
            "wrappedKey": base64.b64encode(nonce + wrapped).decode(),
            "keyId": legacy_key_id(self.key),
        }


def legacy_key_id(key: bytes) -> str:
    """A public name for a legacy key: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(key).hexdigest()[:16].upper()


def decode_legacy_key(value: str) -> bytes:
    """The 32-byte key from its base64 form; ConfigError (no value shown) otherwise."""
    try:
        key = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != DATA_KEY_BYTES:
        raise ConfigError(
            "BACKUP_ENCRYPTION_KEY: not a base64 encoding of 32 bytes. Make one with "
            "'infrabackup keygen --legacy-key --out DIR'.",
            setting="BACKUP_ENCRYPTION_KEY",
        )
    return key


class KeyRing:
    """What can unwrap data keys: PFX identities and legacy keys, tried by name.

    ``lookup`` is an optional callable ``thumbprint -> (private key, cert) | None`` used
    when no identity already held matches (a Key Vault search through versions).
    """

    def __init__(self) -> None:
        self._identities: dict[str, tuple[Any, x509.Certificate]] = {}
        self._legacy: dict[str, bytes] = {}
        self.lookup: Any = None
        self.offered: list[str] = []

    def add_identity(self, private_key: Any, cert: x509.Certificate) -> None:
        sha1, _ = thumbprints(cert)
        self._identities[sha1] = (private_key, cert)
        self.offered.append(sha1)

    def add_legacy_key(self, key: bytes) -> None:
        self._legacy[legacy_key_id(key)] = key

    def __bool__(self) -> bool:
        return bool(self._identities or self._legacy or self.lookup)

    def describe(self) -> str:
        """What the ring holds, by public name only (for messages)."""
        held = [f"the PFX {t} (BACKUP_DECRYPTION_CERT)" for t in self.offered]
        if self.lookup is not None:
            held.append("the other versions of BACKUP_DECRYPTION_CERT in Key Vault")
        held += [f"the legacy key {k} (BACKUP_ENCRYPTION_KEY)" for k in self._legacy]
        return ", ".join(held) or "no key material"

    def must_unlock(self, encryption: dict[str, Any]) -> bool:
        """Whether a check of the backup whose manifest has this ``encryption`` must unlock
        it with the ring, and fail when the ring cannot (rather than check digests only).

        Always when a PFX is held: authenticating is its only use, so a manifest edited to
        name another mode must not escape it. With only a legacy key, for legacy-key
        backups: that key is also the encryption setting of hosts that hold no PFX, whose
        certificate-mode backups are checked by digest (and said so).
        """
        if self._identities or self.lookup is not None:
            return True
        return bool(self._legacy) and encryption.get("mode") == "legacyKey"

    def unwrap(self, encryption: dict[str, Any], backup_id: str) -> bytes:
        """The data key of a backup; KeyMaterialError naming what it needs otherwise."""
        mode = encryption.get("mode")
        try:
            wrapped = base64.b64decode(str(encryption.get("wrappedKey", "")), validate=True)
        except (binascii.Error, ValueError):
            raise KeyMaterialError(
                "The manifest's wrapped data key is not base64: the manifest was modified."
            ) from None
        if mode == "certificate":
            return self._unwrap_rsa(str(encryption.get("thumbprint", "")).upper(), wrapped)
        if mode == "legacyKey":
            key_id = str(encryption.get("keyId", ""))
            key = self._legacy.get(key_id)
            if key is None:
                raise KeyMaterialError(
                    f"This backup was encrypted with the legacy key {key_id} (encryption "
                    f"mode legacyKey); configured is {self.describe()}. Set "
                    "BACKUP_ENCRYPTION_KEY to the key used at backup time (if the backup "
                    "was made with a certificate, its manifest was modified)."
                )
            try:
                return AESGCM(key).decrypt(
                    wrapped[:12], wrapped[12:], _LEGACY_AAD + backup_id.encode()
                )
            except Exception:
                raise KeyMaterialError(
                    "The wrapped data key failed authentication: the manifest was modified."
                ) from None
        raise KeyMaterialError(f"Unknown key mode '{mode}' in the manifest.")

    def _unwrap_rsa(self, thumbprint: str, wrapped: bytes) -> bytes:
        identity = self._identities.get(thumbprint)
        if identity is None and self.lookup is not None:
            identity = self.lookup(thumbprint)
        if identity is None:
            raise KeyMaterialError(
                f"Wrong certificate: this backup was encrypted with the certificate "
                f"{thumbprint} (encryption mode certificate); configured is "
                f"{self.describe()}. Set BACKUP_DECRYPTION_CERT to the PFX whose thumbprint "
                f"is {thumbprint}."
            )
        try:
            data_key: bytes = identity[0].decrypt(wrapped, _OAEP)
        except ValueError:
            raise KeyMaterialError(
                f"The data key could not be unwrapped with the certificate {thumbprint}: the "
                "manifest's wrapped key was modified."
            ) from None
        return data_key


# --- key generation ----------------------------------------------------------------


@dataclass
class GeneratedCertificate:
    cer_der: bytes
    pfx: bytes
    thumbprint: str
    thumbprint_sha256: str
    not_after: dt.datetime


def generate_certificate(
    name: str, password: str, *, days: int = 730, bits: int = 3072
) -> GeneratedCertificate:
    """A self-signed RSA certificate for key transport, as CER (DER) and password PFX."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"infrabackup {name}")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=True,
                data_encipherment=True, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    pfx = pkcs12.serialize_key_and_certificates(
        name.encode(), key, cert, None, serialization.BestAvailableEncryption(password.encode())
    )
    sha1, sha256 = thumbprints(cert)
    return GeneratedCertificate(
        cer_der=cert.public_bytes(serialization.Encoding.DER),
        pfx=pfx,
        thumbprint=sha1,
        thumbprint_sha256=sha256,
        not_after=cert.not_valid_after_utc,
    )


def generate_legacy_key() -> str:
    """A new legacy key, base64 (the form BACKUP_ENCRYPTION_KEY takes)."""
    return base64.b64encode(os.urandom(DATA_KEY_BYTES)).decode()
