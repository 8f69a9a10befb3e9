"""Which key material a run uses, resolved from the settings.

``BACKUP_ENCRYPTION_CERT`` (a .cer file, or a Key Vault certificate URL) wraps new
backups' data keys; once it is set, ``BACKUP_ENCRYPTION_KEY`` is no longer used for new
backups (the switch from key to certificate is one-way) but still unwraps old ones.
``BACKUP_DECRYPTION_CERT`` (a .pfx file, or a Key Vault secret URL) is loaded only for
verify-with-contents and restore. ``BACKUP_ENCRYPTION_KEY`` is base64 or a Key Vault
secret URL.

Key Vault URLs are resolved through :mod:`infrabackup.keys.keyvault` with the given
:class:`~infrabackup.keys.keyvault.KeyVaultAccess` (default: managed identity /
``DefaultAzureCredential``); the PFX and the legacy key stay in memory.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from infrabackup.errors import ConfigError
from infrabackup.keys.wrap import (
    CertificateWrapper,
    KeyRing,
    KeyWrapper,
    LegacyKeyWrapper,
    certificate_warnings,
    decode_legacy_key,
    load_certificate_file,
    load_pfx,
    read_key_file,
)
from infrabackup.settings import Settings

if TYPE_CHECKING:
    from infrabackup.keys.keyvault import KeyVaultAccess


def is_key_vault_url(value: str | None) -> bool:
    """:func:`infrabackup.keys.keyvault.is_key_vault_url`, without importing the Azure SDK:
    a run with certificate files only never loads it (a third of the command's start-up)."""
    return bool(value) and str(value).strip().lower().startswith(("https://", "http://"))


class _LazyAccess:
    """``KeyVaultAccess.default()`` built on first use, so file-only runs never touch
    azure-identity and one run shares one credential (one token) across fetches."""

    def __init__(self, access: KeyVaultAccess | None) -> None:
        self._access = access

    def get(self) -> KeyVaultAccess:
        if self._access is None:
            from infrabackup.keys.keyvault import KeyVaultAccess

            self._access = KeyVaultAccess.default()
        return self._access


def encryption_wrapper(
    settings: Settings, now: dt.datetime, *, vault: KeyVaultAccess | None = None
) -> KeyWrapper:
    """The wrapper for new backups: the certificate if configured, else the legacy key.

    A Key Vault certificate URL is fetched now (current version unless the URL names
    one); every Key Vault or certificate failure is raised here, before the caller
    writes anything to the share.
    """
    access = _LazyAccess(vault)
    if settings.encryption_cert:
        if is_key_vault_url(settings.encryption_cert):
            from infrabackup.keys.keyvault import fetch_certificate, parse_object_url

            url = parse_object_url(
                settings.encryption_cert, "BACKUP_ENCRYPTION_CERT", ("certificates",)
            )
            fetched = fetch_certificate(url, access.get())
            return CertificateWrapper(
                fetched.certificate, f"BACKUP_ENCRYPTION_CERT: {fetched.url}",
                certificate_warnings(fetched.certificate, now),
            )
        cert = load_certificate_file(settings.encryption_cert)
        return CertificateWrapper(
            cert, f"BACKUP_ENCRYPTION_CERT: {settings.encryption_cert}",
            certificate_warnings(cert, now),
        )
    if settings.encryption_key:
        key = _legacy_key(settings, access)
        return LegacyKeyWrapper(
            key,
            ["Legacy key mode (1811 and older): configure BACKUP_ENCRYPTION_CERT to switch "
             "to certificate encryption."],
        )
    raise ConfigError(
        "BACKUP_ENCRYPTION_CERT: not set, and no legacy BACKUP_ENCRYPTION_KEY either. "
        "Example: /etc/infrabackup/backup.cer (made by 'infrabackup keygen').",
        setting="BACKUP_ENCRYPTION_CERT",
    )


def decryption_keyring(settings: Settings, *, vault: KeyVaultAccess | None = None) -> KeyRing:
    """Everything that can unwrap data keys: the PFX and the legacy key, when set.

    A Key Vault secret URL (or certificate URL, meaning its secret) is read now. Without
    a version in the URL, the ring also gets a ``lookup`` that searches the secret's
    versions for a backup made before a rotation; with a version, only that one is used.
    """
    ring = KeyRing()
    access = _LazyAccess(vault)
    password = settings.decryption_cert_password
    if settings.decryption_cert and is_key_vault_url(settings.decryption_cert):
        from infrabackup.keys.keyvault import fetch_identity, identity_finder, parse_object_url

        url = parse_object_url(
            settings.decryption_cert, "BACKUP_DECRYPTION_CERT", ("secrets", "certificates")
        )
        identity = fetch_identity(url, access.get(), password.reveal() if password else None)
        ring.add_identity(identity.private_key, identity.certificate)
        if url.version is None and identity.url.version:
            ring.lookup = identity_finder(
                url, access.get(), password.reveal() if password else None,
                known={identity.url.version: identity.thumbprint},
            )
    elif settings.decryption_cert:
        path = settings.decryption_cert
        data = read_key_file("BACKUP_DECRYPTION_CERT", path, "/secure/backup.pfx")
        key, cert = load_pfx(
            data, password.reveal() if password else None, f"BACKUP_DECRYPTION_CERT: {path}"
        )
        ring.add_identity(key, cert)
    if settings.encryption_key:
        ring.add_legacy_key(_legacy_key(settings, access))
    return ring


def _legacy_key(settings: Settings, access: _LazyAccess) -> bytes:
    """The legacy key's 32 bytes, from base64 or from a Key Vault secret."""
    assert settings.encryption_key is not None
    value = settings.encryption_key.reveal()
    if is_key_vault_url(value):
        from infrabackup.keys.keyvault import fetch_secret_value, parse_object_url

        url = parse_object_url(value, "BACKUP_ENCRYPTION_KEY", ("secrets",))
        value = fetch_secret_value(url, access.get(), "BACKUP_ENCRYPTION_KEY")
    return decode_legacy_key(value)


def require_decryption(ring: KeyRing) -> None:
    """ConfigError unless something in the ring can decrypt (restore needs it)."""
    if not ring:
        raise ConfigError(
            "BACKUP_DECRYPTION_CERT: not set; restoring needs the PFX (private key) of the "
            "certificate the backup was made with. Example: /secure/backup.pfx, with "
            "BACKUP_DECRYPTION_CERT_PASSWORD.",
            setting="BACKUP_DECRYPTION_CERT",
        )
