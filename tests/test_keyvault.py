"""Key Vault: certificates, PFX, rotation, legacy key and keygen, with the real SDK.

The real ``azure-keyvault-certificates`` / ``azure-keyvault-secrets`` clients (and, in the
managed-identity and end-to-end tests, the real ``DefaultAzureCredential``) talk HTTPS to
the local stand-in of :mod:`tests.servers.keyvault`; nothing in the SDK is patched.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import os
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.identity import CredentialUnavailableError
from cryptography import x509

from infrabackup.alerts import Alert
from infrabackup.errors import (
    AuthenticationError,
    ConfigError,
    ConnectivityError,
    GeneralFault,
    InfraBackupError,
    KeyMaterialError,
    PathError,
)
from infrabackup.keys.keyvault import (
    KeyVaultAccess,
    fetch_certificate,
    keygen_to_vault,
    parse_object_url,
    parse_vault_url,
    translated,
)
from infrabackup.keys.provider import decryption_keyring, encryption_wrapper
from infrabackup.keys.wrap import (
    CertificateWrapper,
    GeneratedCertificate,
    KeyRing,
    LegacyKeyWrapper,
    generate_certificate,
    generate_legacy_key,
)
from infrabackup.settings import ALL_SETTINGS, Secret, Settings
from tests.servers.keyvault import KeyVaultStandIn

NOW = dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.UTC)
PASSWORD = "pfx-password-8f2c1e"


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def certs() -> list[GeneratedCertificate]:
    """Three certificates (2048-bit to keep the suite fast), for versions and strangers."""
    return [generate_certificate(f"kv-test-{i}", PASSWORD, bits=2048) for i in range(3)]


@pytest.fixture
def access(keyvault: KeyVaultStandIn) -> KeyVaultAccess:
    return KeyVaultAccess(keyvault.credential(), keyvault.client_options())


def settings(**values: Any) -> Settings:
    """Settings with only the key-material fields set (what key_provider reads)."""
    return Settings(share_path=None, **values)


def data_key() -> bytes:
    return os.urandom(32)


# --- URLs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "vault", "name", "version"),
    [
        ("https://contoso-backup.vault.azure.net/certificates/infrabackup",
         "contoso-backup", "infrabackup", None),
        ("https://contoso-backup.vault.azure.net/certificates/infrabackup/"
         "0123456789ABCDEF0123456789abcdef/", "contoso-backup", "infrabackup",
         "0123456789abcdef0123456789abcdef"),
        ("https://kv1.vault.azure.cn/certificates/a-b", "kv1", "a-b", None),
        ("https://kv1.vault.usgovcloudapi.net/certificates/c", "kv1", "c", None),
        ("https://kv1.vault.nyc.contoso.com/certificates/c", "kv1", "c", None),
        ("https://127.0.0.1:8443/certificates/c", "127.0.0.1:8443", "c", None),
    ],
)
def test_certificate_urls_of_every_cloud_and_a_loopback_stand_in_parse(
    value: str, vault: str, name: str, version: str | None
) -> None:
    url = parse_object_url(value, "BACKUP_ENCRYPTION_CERT", ("certificates",))
    assert (url.vault, url.name, url.version, url.kind) == (vault, name, version, "certificates")


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ("http://kv1.vault.azure.net/certificates/c", "not an https:// URL"),
        ("https://kv1.vault.azure.net/", "names no Key Vault"),
        ("https://kv1.vault.azure.net/keys/c", "names no Key Vault"),
        ("https://kv1.vault.azure.net/secrets/c", "is a secret URL"),
        ("https://kv1.blob.core.windows.net/certificates/c", "is not a Key Vault host name"),
        ("https://kv1/certificates/c", "is not a Key Vault host name"),
        ("https://1kv.vault.azure.net/certificates/c", "is not a Key Vault name"),
        ("https://kv1.vault.azure.net/certificates/c_d", "is not a Key Vault object name"),
        ("https://kv1.vault.azure.net/certificates/c/v1", "is not a Key Vault version id"),
        ("https://kv1.vault.azure.net/certificates/c?x=1", "must not have a query"),
        ("https://10.0.0.1/certificates/c", "is not a Key Vault host name"),
    ],
)
def test_bad_certificate_urls_are_config_errors_naming_the_setting(
    value: str, complaint: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_object_url(value, "BACKUP_ENCRYPTION_CERT", ("certificates",))
    assert caught.value.setting == "BACKUP_ENCRYPTION_CERT"
    assert caught.value.message.startswith("BACKUP_ENCRYPTION_CERT: ")
    assert complaint in caught.value.message
    assert "Example: https://" in caught.value.message


def test_a_vault_url_must_be_https_and_a_vault_host() -> None:
    assert parse_vault_url("https://kv1.vault.azure.net/", "--key-vault") == (
        "https://kv1.vault.azure.net", "kv1")
    with pytest.raises(ConfigError, match="--key-vault"):
        parse_vault_url("https://kv1.azurewebsites.net", "--key-vault")


# --- the encryption certificate (CER) ---------------------------------------------------------


def test_certificate_url_without_version_gives_the_current_version(
    keyvault: KeyVaultStandIn, access: KeyVaultAccess, certs: list[GeneratedCertificate]
) -> None:
    keyvault.add_certificate("backup", certs[0].pfx, PASSWORD)
    current = keyvault.add_certificate("backup", certs[1].pfx, PASSWORD)

    url = parse_object_url(f"{keyvault.url}/certificates/backup", "S", ("certificates",))
    fetched = fetch_certificate(url, access)

    assert fetched.thumbprint == certs[1].thumbprint
    assert fetched.url.version == current


def test_certificate_url_with_version_gives_that_version(
    keyvault: KeyVaultStandIn, access: KeyVaultAccess, certs: list[GeneratedCertificate]
) -> None:
    first = keyvault.add_certificate("backup", certs[0].pfx, PASSWORD)
    keyvault.add_certificate("backup", certs[1].pfx, PASSWORD)

    wrapper = encryption_wrapper(
        settings(encryption_cert=f"{keyvault.url}/certificates/backup/{first}"), NOW,
        vault=access,
    )

    assert isinstance(wrapper, CertificateWrapper)
    assert wrapper.wrap(data_key(), "id")["thumbprint"] == certs[0].thumbprint
    assert wrapper.source == f"BACKUP_ENCRYPTION_CERT: {keyvault.url}/certificates/backup/{first}"
    assert ("GET", f"/certificates/backup/{first}") in keyvault.requests


def test_encryption_reads_only_the_certificate_never_the_secret(
    keyvault: KeyVaultStandIn, access: KeyVaultAccess, certs: list[GeneratedCertificate]
) -> None:
    keyvault.add_certificate("backup", certs[0].pfx, PASSWORD)

    encryption_wrapper(
        settings(encryption_cert=f"{keyvault.url}/certificates/backup"), NOW, vault=access
    )

    assert not [path for _, path in keyvault.requests if path.startswith("/secrets")]


def test_an_expiring_vault_certificate_still_wraps_and_is_reported(
    keyvault: KeyVaultStandIn, access: KeyVaultAccess
) -> None:
    short = generate_certificate("short", PASSWORD, days=10, bits=2048)
    keyvault.add_certificate("short", short.pfx, PASSWORD)

    wrapper = encryption_wrapper(
        settings(encryption_cert=f"{keyvault.url}/certificates/short"),
        dt.datetime.now(dt.UTC), vault=access,
    )

    assert wrapper.wrap(data_key(), "id")["thumbprint"] == short.thumbprint
    assert len(wrapper.warnings) == 1 and "rotate it before then" in wrapper.warnings[0]


# --- the PFX and a round trip -------------------------------------------------------------


@pytest.mark.parametrize("kind", ["secrets", "certificates"])
def test_pfx_from_the_secret_unwraps_what_the_vault_certificate_wrapped(
    keyvault: KeyVaultStandIn, access: KeyVaultAccess, certs: list[GeneratedCertificate],
    kind: str,
) -> None:
    keyvault.add_certificate("backup", certs[0].pfx, PASSWORD)
    key = data_key()
    wrapped = encryption_wrapper(
        settings(encryption_cert=f"{keyvault.url}/certificates/backup"), NOW, vault=access
    ).wrap(key, "backup-1")

    ring = decryption_keyring(
        settings(decryption_cert=f"{keyvault.url}/{kind}/backup"), vault=access
    )

    assert ring.unwrap(wrapped, "backup-1") == key
    assert ("GET", "/secrets/backup/") in keyvault.requests


def test_a_pfx_uploaded_as_a_plain_secret_opens_with_the_password_setting(
    keyvault: KeyVaultStandIn, access: KeyVaultAccess, certs: list[GeneratedCertificate]
) -> None:
    keyvault.add_secret("manual", base64.b64encode(certs[2].pfx).decode(), "application/x-pkcs12")
    key = data_key()
    wrapped = _wrap_with(certs[2], key)

    ring = decryption_keyring(
        settings(decryption_cert=f"{keyvault.url}/secrets/manual",
                 decryption_cert_password=Secret(PASSWORD)),
        vault=access,
    )
    assert ring.unwrap(wrapped, "backup-1") == key

    with pytest.raises(KeyMaterialError, match="password"):
        decryption_keyring(settings(decryption_cert=f"{keyvault.url}/secrets/manual"),
                           vault=access)


# --- rotation -----------------------------------------------------------------------------


def test_after_rotation_new_backups_use_the_new_version_and_old_ones_still_restore(
    keyvault: KeyVaultStandIn, access: KeyVaultAccess, certs: list[GeneratedCertificate]
) -> None:
    cert_url = f"{keyvault.url}/certificates/backup"
    keyvault.add_certificate("backup", certs[0].pfx, PASSWORD)
    old_key = data_key()
    old = encryption_wrapper(settings(encryption_cert=cert_url), NOW, vault=access).wrap(
        old_key, "old")

    keyvault.add_certificate("backup", certs[1].pfx, PASSWORD)  # the rotation
    new_key = data_key()
    new = encryption_wrapper(settings(encryption_cert=cert_url), NOW, vault=access).wrap(
        new_key, "new")

    assert old["thumbprint"] == certs[0].thumbprint
    assert new["thumbprint"] == certs[1].thumbprint
    ring = decryption_keyring(
        settings(decryption_cert=f"{keyvault.url}/secrets/backup"), vault=access
    )
    assert ring.unwrap(new, "new") == new_key
    assert ("GET", "/secrets/backup/versions") not in keyvault.requests  # current sufficed
    assert ring.unwrap(old, "old") == old_key
    assert ("GET", "/secrets/backup/versions") in keyvault.requests


def test_a_pinned_secret_version_is_the_only_one_tried(
    keyvault: KeyVaultStandIn, access: KeyVaultAccess, certs: list[GeneratedCertificate]
) -> None:
    keyvault.add_certificate("backup", certs[0].pfx, PASSWORD)
    second = keyvault.add_certificate("backup", certs[1].pfx, PASSWORD)
    old = _wrap_with(certs[0], data_key())

    ring = decryption_keyring(
        settings(decryption_cert=f"{keyvault.url}/secrets/backup/{second}"), vault=access
    )

    with pytest.raises(KeyMaterialError) as caught:
        ring.unwrap(old, "old")
    assert certs[0].thumbprint in caught.value.message
    assert ("GET", "/secrets/backup/versions") not in keyvault.requests


def test_a_backup_whose_certificate_is_in_no_version_names_the_thumbprint_it_needs(
    keyvault: KeyVaultStandIn, access: KeyVaultAccess, certs: list[GeneratedCertificate]
) -> None:
    keyvault.add_certificate("backup", certs[0].pfx, PASSWORD)
    keyvault.add_certificate("backup", certs[1].pfx, PASSWORD)
    stranger = _wrap_with(certs[2], data_key())

    ring = decryption_keyring(
        settings(decryption_cert=f"{keyvault.url}/secrets/backup"), vault=access
    )

    with pytest.raises(KeyMaterialError) as caught:
        ring.unwrap(stranger, "x")
    assert certs[2].thumbprint in caught.value.message
    assert "secret 'backup'" in caught.value.message


def test_a_disabled_old_version_is_skipped_and_said_so(
    keyvault: KeyVaultStandIn, access: KeyVaultAccess, certs: list[GeneratedCertificate]
) -> None:
    first = keyvault.add_certificate("backup", certs[0].pfx, PASSWORD)
    keyvault.add_certificate("backup", certs[1].pfx, PASSWORD)
    keyvault.disable("secrets", "backup", first)
    old = _wrap_with(certs[0], data_key())

    ring = decryption_keyring(
        settings(decryption_cert=f"{keyvault.url}/secrets/backup"), vault=access
    )

    with pytest.raises(KeyMaterialError, match=r"1 disabled version\(s\) skipped") as caught:
        ring.unwrap(old, "old")
    assert certs[0].thumbprint in caught.value.message


# --- the legacy key -----------------------------------------------------------------------


def test_legacy_key_from_a_secret_wraps_and_unwraps(
    keyvault: KeyVaultStandIn, access: KeyVaultAccess
) -> None:
    keyvault.add_secret("legacy", generate_legacy_key())
    value = Secret(f"{keyvault.url}/secrets/legacy")
    key = data_key()

    wrapper = encryption_wrapper(settings(encryption_key=value), NOW, vault=access)
    ring = decryption_keyring(settings(encryption_key=value), vault=access)

    assert isinstance(wrapper, LegacyKeyWrapper)
    assert ring.unwrap(wrapper.wrap(key, "b"), "b") == key


def test_a_legacy_secret_that_is_no_key_is_a_config_error_without_its_value(
    keyvault: KeyVaultStandIn, access: KeyVaultAccess
) -> None:
    keyvault.add_secret("legacy", "not-a-key-5e1d")

    with pytest.raises(ConfigError) as caught:
        encryption_wrapper(settings(encryption_key=Secret(f"{keyvault.url}/secrets/legacy")),
                           NOW, vault=access)
    assert caught.value.setting == "BACKUP_ENCRYPTION_KEY"
    assert "not-a-key-5e1d" not in str(caught.value)


# --- faults -------------------------------------------------------------------------------


def test_a_missing_certificate_is_a_path_fault_naming_it_and_the_vault(
    keyvault: KeyVaultStandIn, access: KeyVaultAccess
) -> None:
    with pytest.raises(PathError) as caught:
        encryption_wrapper(
            settings(encryption_cert=f"{keyvault.url}/certificates/nope"), NOW, vault=access
        )
    assert caught.value.alert is Alert.PATH
    assert caught.value.status == "404"
    assert f"certificate nope not found in vault 127.0.0.1:{keyvault.port}" in (
        caught.value.message)


def test_a_missing_secret_version_is_a_path_fault(
    keyvault: KeyVaultStandIn, access: KeyVaultAccess, certs: list[GeneratedCertificate]
) -> None:
    keyvault.add_certificate("backup", certs[0].pfx, PASSWORD)
    missing = uuid.uuid4().hex

    with pytest.raises(PathError, match=f"secret backup version {missing} not found"):
        decryption_keyring(
            settings(decryption_cert=f"{keyvault.url}/secrets/backup/{missing}"), vault=access
        )


def test_a_disabled_certificate_is_a_key_material_error(
    keyvault: KeyVaultStandIn, access: KeyVaultAccess, certs: list[GeneratedCertificate]
) -> None:
    keyvault.add_certificate("backup", certs[0].pfx, PASSWORD)
    keyvault.disable("certificates", "backup")

    with pytest.raises(KeyMaterialError, match="is disabled in Key Vault") as caught:
        encryption_wrapper(
            settings(encryption_cert=f"{keyvault.url}/certificates/backup"), NOW, vault=access
        )
    assert "BACKUP_ENCRYPTION_CERT" in caught.value.message
    with pytest.raises(KeyMaterialError, match="is disabled in Key Vault") as caught:
        decryption_keyring(settings(decryption_cert=f"{keyvault.url}/secrets/backup"),
                           vault=access)
    assert caught.value.status == "403"


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_token_is_an_authentication_fault(
    keyvault: KeyVaultStandIn, access: KeyVaultAccess, certs: list[GeneratedCertificate],
    status: int,
) -> None:
    keyvault.add_certificate("backup", certs[0].pfx, PASSWORD)
    keyvault.deny = status

    with pytest.raises(AuthenticationError) as caught:
        encryption_wrapper(
            settings(encryption_cert=f"{keyvault.url}/certificates/backup"), NOW, vault=access
        )
    assert caught.value.alert is Alert.AUTHENTICATION
    assert caught.value.status == str(status)
    assert "Key Vault Reader" in caught.value.message
    with pytest.raises(AuthenticationError, match="Key Vault Secrets User"):
        decryption_keyring(settings(decryption_cert=f"{keyvault.url}/secrets/backup"),
                           vault=access)


@pytest.mark.parametrize("status", [429, 503])
def test_throttling_or_a_failing_service_is_a_retryable_general_fault(
    keyvault: KeyVaultStandIn, access: KeyVaultAccess, certs: list[GeneratedCertificate],
    status: int,
) -> None:
    keyvault.add_certificate("backup", certs[0].pfx, PASSWORD)
    keyvault.deny = status

    with pytest.raises(GeneralFault) as caught:
        encryption_wrapper(
            settings(encryption_cert=f"{keyvault.url}/certificates/backup"), NOW, vault=access
        )
    assert caught.value.alert is Alert.GENERAL and caught.value.retryable
    assert caught.value.status == str(status)


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (ServiceRequestError("connection refused"), ConnectivityError),
        (ServiceResponseError("connection reset"), ConnectivityError),
        (ClientAuthenticationError("no token"), AuthenticationError),
        (ResourceNotFoundError("gone"), PathError),
        (HttpResponseError("odd"), GeneralFault),
        (AzureError("anything else"), GeneralFault),
        (ValueError("challenge resource mismatch"), AuthenticationError),
    ],
)
def test_every_azure_exception_is_translated_into_one_service_error(
    raised: Exception, expected: type[InfraBackupError]
) -> None:
    url = parse_object_url("https://kv1.vault.azure.net/certificates/c", "S", ("certificates",))

    with pytest.raises(expected) as caught, translated(url, "S"):
        raise raised

    assert type(caught.value) is expected
    assert caught.value.message.startswith("S: ")


def test_a_credential_that_cannot_get_a_token_is_an_authentication_fault(
    keyvault: KeyVaultStandIn, certs: list[GeneratedCertificate]
) -> None:
    class NoIdentity:
        def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
            raise CredentialUnavailableError("ManagedIdentityCredential: no identity")

    keyvault.add_certificate("backup", certs[0].pfx, PASSWORD)
    access = KeyVaultAccess(NoIdentity(), keyvault.client_options())

    with pytest.raises(AuthenticationError, match="no access token could be obtained"):
        encryption_wrapper(
            settings(encryption_cert=f"{keyvault.url}/certificates/backup"), NOW, vault=access
        )


def test_a_vault_that_is_down_is_a_fast_connectivity_fault(
    keyvault: KeyVaultStandIn, access: KeyVaultAccess, certs: list[GeneratedCertificate]
) -> None:
    keyvault.add_certificate("backup", certs[0].pfx, PASSWORD)
    keyvault.down()
    started = time.monotonic()

    with pytest.raises(ConnectivityError) as caught:
        encryption_wrapper(
            settings(encryption_cert=f"{keyvault.url}/certificates/backup"), NOW, vault=access
        )

    assert time.monotonic() - started < 5
    assert caught.value.alert is Alert.CONNECTIVITY and caught.value.retryable
    assert "cannot be reached" in caught.value.message


def test_a_vault_host_that_does_not_resolve_is_a_path_fault(
    keyvault: KeyVaultStandIn, access: KeyVaultAccess
) -> None:
    with pytest.raises(PathError, match="does not resolve"):
        encryption_wrapper(
            settings(encryption_cert="https://nosuchvault.vault.example.invalid/certificates/c"),
            NOW, vault=access,
        )


def test_a_secret_url_for_the_encryption_certificate_is_refused_before_any_request(
    keyvault: KeyVaultStandIn, access: KeyVaultAccess
) -> None:
    with pytest.raises(ConfigError, match="is a secret URL"):
        encryption_wrapper(
            settings(encryption_cert=f"{keyvault.url}/secrets/backup"), NOW, vault=access
        )
    assert keyvault.requests == []


# --- managed identity (the production credential) ------------------------------------------


def test_the_default_access_uses_the_managed_identity_named_by_azure_client_id(
    keyvault: KeyVaultStandIn, certs: list[GeneratedCertificate],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    keyvault.add_certificate("backup", certs[0].pfx, PASSWORD)
    for name, value in keyvault.managed_identity_env().items():
        monkeypatch.setenv(name, value)
    client_id = str(uuid.uuid4())
    monkeypatch.setenv("AZURE_CLIENT_ID", client_id)
    keyvault.msi_requests.clear()

    wrapper = encryption_wrapper(
        settings(encryption_cert=f"{keyvault.url}/certificates/backup"), NOW
    )

    assert wrapper.wrap(data_key(), "b")["thumbprint"] == certs[0].thumbprint
    assert keyvault.msi_requests[-1]["client_id"] == [client_id]
    assert keyvault.msi_requests[-1]["resource"] == [keyvault.resource]


# --- keygen into Key Vault ----------------------------------------------------------------


def test_keygen_imports_a_certificate_whose_urls_round_trip_a_data_key(
    keyvault: KeyVaultStandIn, access: KeyVaultAccess
) -> None:
    imported = keygen_to_vault(keyvault.url, "fresh", access=access, bits=2048)

    assert imported.certificate_url == f"{keyvault.url}/certificates/fresh"
    assert imported.secret_url == f"{keyvault.url}/secrets/fresh"
    assert imported.certificate_id == f"{keyvault.url}/certificates/fresh/{imported.version}"
    key = data_key()
    wrapped = encryption_wrapper(
        settings(encryption_cert=imported.certificate_url), NOW, vault=access
    ).wrap(key, "b")
    assert wrapped["thumbprint"] == imported.thumbprint
    ring = decryption_keyring(settings(decryption_cert=imported.secret_url), vault=access)
    assert ring.unwrap(wrapped, "b") == key


def test_keygen_again_rotates_and_the_first_certificate_still_restores(
    keyvault: KeyVaultStandIn, access: KeyVaultAccess
) -> None:
    first = keygen_to_vault(keyvault.url, "rot", access=access, bits=2048)
    key = data_key()
    old = encryption_wrapper(
        settings(encryption_cert=first.certificate_url), NOW, vault=access
    ).wrap(key, "b")

    second = keygen_to_vault(keyvault.url, "rot", access=access, bits=2048)

    assert second.version != first.version and second.thumbprint != first.thumbprint
    new = encryption_wrapper(settings(encryption_cert=second.certificate_url), NOW, vault=access)
    assert new.wrap(data_key(), "c")["thumbprint"] == second.thumbprint
    ring = decryption_keyring(settings(decryption_cert=second.secret_url), vault=access)
    assert ring.unwrap(old, "b") == key


def test_keygen_import_keeps_the_private_key_exportable(
    keyvault: KeyVaultStandIn, access: KeyVaultAccess
) -> None:
    keygen_to_vault(keyvault.url, "policy", access=access, bits=2048)

    sent = json.loads(keyvault.bodies[-1])
    assert sent["policy"]["key_props"]["exportable"] is True
    assert sent["policy"]["secret_props"]["contentType"] == "application/x-pkcs12"


def test_keygen_refuses_a_bad_vault_url_or_name_before_generating(
    access: KeyVaultAccess,
) -> None:
    with pytest.raises(ConfigError, match="--key-vault"):
        keygen_to_vault("https://example.com", "ok", access=access)
    with pytest.raises(ConfigError, match="--name"):
        keygen_to_vault("https://kv1.vault.azure.net", "bad_name", access=access)


# --- no secret in logs, messages or reprs --------------------------------------------------


def test_no_secret_value_appears_in_logs_errors_or_reprs(
    keyvault: KeyVaultStandIn, access: KeyVaultAccess, certs: list[GeneratedCertificate],
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)
    for name in ("azure", "azure.core", "azure.identity", "urllib3", "msal", "infrabackup"):
        caplog.set_level(logging.DEBUG, logger=name)
    legacy = generate_legacy_key()
    keyvault.add_secret("legacy", legacy)
    keyvault.add_certificate("backup", certs[0].pfx, PASSWORD)
    keyvault.add_certificate("backup", certs[1].pfx, PASSWORD)
    texts: list[str] = []

    # Every path: CER, PFX, rotation search, legacy key, keygen import, managed identity,
    # and failures (wrong thumbprint, disabled, denied, down).
    old = _wrap_with(certs[0], data_key())
    wrapper = encryption_wrapper(
        settings(encryption_cert=f"{keyvault.url}/certificates/backup"), NOW, vault=access)
    ring = decryption_keyring(
        settings(decryption_cert=f"{keyvault.url}/secrets/backup",
                 encryption_key=Secret(f"{keyvault.url}/secrets/legacy")), vault=access)
    ring.unwrap(old, "x")
    texts += [repr(wrapper), repr(ring), repr(access)]
    imported = keygen_to_vault(keyvault.url, "leak", access=access, bits=2048)
    texts.append(repr(imported))
    for name, value in keyvault.managed_identity_env().items():
        monkeypatch.setenv(name, value)
    encryption_wrapper(settings(encryption_cert=imported.certificate_url), NOW)
    failures: list[InfraBackupError] = []
    with pytest.raises(KeyMaterialError) as caught:
        ring.unwrap(_wrap_with(certs[2], data_key()), "y")
    failures.append(caught.value)
    keyvault.disable("secrets", "backup")
    with pytest.raises(KeyMaterialError) as caught:
        decryption_keyring(settings(decryption_cert=f"{keyvault.url}/secrets/backup"),
                           vault=access)
    failures.append(caught.value)
    keyvault.deny = 401
    with pytest.raises(AuthenticationError) as denied:
        decryption_keyring(settings(decryption_cert=f"{keyvault.url}/secrets/legacy"),
                           vault=access)
    failures.append(denied.value)
    keyvault.down()
    with pytest.raises(ConnectivityError) as down:
        decryption_keyring(settings(decryption_cert=f"{keyvault.url}/secrets/backup"),
                           vault=access)
    failures.append(down.value)

    for error in failures:
        texts += [str(error), repr(error), json.dumps(error.to_dict()),
                  "".join(traceback.format_exception(error))]
    for record in caplog.records:
        texts.append(record.getMessage())
        if record.exc_info:
            texts.append("".join(traceback.format_exception(*record.exc_info)))
    secrets_ = _secret_values(keyvault, certs, legacy)
    assert len(caplog.records) > 20  # the SDK's own logging really was captured
    for text in texts:
        for label, value in secrets_.items():
            assert value not in text, f"{label} leaked"


def _secret_values(
    keyvault: KeyVaultStandIn, certs: list[GeneratedCertificate], legacy: str
) -> dict[str, str]:
    values = {"legacy key": legacy, "PFX password": PASSWORD}
    for cert in certs:
        values[f"PFX {cert.thumbprint} base64"] = base64.b64encode(cert.pfx).decode()[:64]
        values[f"PFX {cert.thumbprint} bytes"] = repr(cert.pfx[:32])[2:-1]
    for name, versions in keyvault.secrets.versions.items():
        for ver in versions:
            values[f"secret {name}/{ver.version}"] = ver.value[:64]
    for body in keyvault.bodies:
        if body.startswith(b"{"):
            sent = json.loads(body)
            if sent.get("pwd"):
                values["keygen upload password"] = sent["pwd"]
            if sent.get("value"):
                values["keygen PFX"] = sent["value"][:64]
    for token in keyvault.tokens:
        values[f"token {token[-8:]}"] = token.rsplit(".", 1)[-1]
    return values


# --- helpers ------------------------------------------------------------------------------


def _wrap_with(cert: GeneratedCertificate, key: bytes) -> dict[str, Any]:
    """The manifest encryption object of a backup made with ``cert``."""
    wrapper = CertificateWrapper(x509.load_der_x509_certificate(cert.cer_der), "test", [])
    return wrapper.wrap(key, "backup")


def test_key_ring_lookup_is_not_used_for_a_file_pfx(
    tmp_path: Path, certs: list[GeneratedCertificate]
) -> None:
    """File mode is unchanged: no Key Vault access is built or used."""
    pfx = tmp_path / "backup.pfx"
    pfx.write_bytes(certs[0].pfx)
    key = data_key()

    ring = decryption_keyring(
        settings(decryption_cert=str(pfx), decryption_cert_password=Secret(PASSWORD)),
        vault=None,
    )

    assert isinstance(ring, KeyRing) and ring.lookup is None
    assert ring.unwrap(_wrap_with(certs[0], key), "backup") == key


def _clear_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ALL_SETTINGS:
        monkeypatch.delenv(name, raising=False)


# --- end to end: the infrabackup command with Key Vault URLs ---------------------------------


@pytest.fixture
def vault_env(
    keyvault: KeyVaultStandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Settings for a local-folder share, one directory source, and Key Vault URLs; the
    credential is the production DefaultAzureCredential via the managed-identity endpoint."""
    _clear_settings(monkeypatch)
    source = tmp_path / "src"
    (source / "state").mkdir(parents=True)
    (source / "state" / "accounts.json").write_text('{"accounts": [1, 2, 3]}')
    (source / "settings.ini").write_bytes(os.urandom(70_000))
    (tmp_path / "share").mkdir()
    values = {
        "BACKUP_SHARE_PATH": str(tmp_path / "share"),
        "BACKUP_EXTERNAL_DOMAIN": "contoso.com",
        "BACKUP_REGION": "nyc",
        "BACKUP_SOURCES": json.dumps([{"name": "ACS", "type": "directory", "path": str(source)}]),
        "BACKUP_STAMP_VERSION": "1.2408.1.50",
        "BACKUP_ENCRYPTION_CERT": f"{keyvault.url}/certificates/backup",
        "BACKUP_DECRYPTION_CERT": f"{keyvault.url}/secrets/backup",
        "AZURE_CLIENT_ID": str(uuid.uuid4()),
        **keyvault.managed_identity_env(),
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return source


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    from infrabackup.cli import main

    with pytest.raises(SystemExit) as exited:
        main(list(args))
    out, err = capsys.readouterr()
    return int(exited.value.code or 0), out, err


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_cli_backup_and_restore_with_key_vault_urls_across_a_rotation(
    keyvault: KeyVaultStandIn, certs: list[GeneratedCertificate], vault_env: Path,
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    keyvault.add_certificate("backup", certs[0].pfx, PASSWORD)
    code, out, err = _cli(capsys, "backup", "--json")
    assert code == 0, err
    before = json.loads(out)
    before_files = _files(vault_env)

    keyvault.add_certificate("backup", certs[1].pfx, PASSWORD)  # rotation
    (vault_env / "state" / "accounts.json").write_text('{"accounts": [4]}')
    code, out, err = _cli(capsys, "backup", "--json")
    assert code == 0, err
    after = json.loads(out)

    assert before["thumbprint"] == certs[0].thumbprint
    assert after["thumbprint"] == certs[1].thumbprint
    for backup_id, expected in ((before["backupId"], before_files),
                                (after["backupId"], _files(vault_env))):
        target = tmp_path / f"restore-{backup_id}"
        code, out, err = _cli(capsys, "restore", backup_id, "--to", str(target), "--json")
        assert code == 0, err
        assert _files(target / "ACS") == expected
    assert ("GET", "/secrets/backup/versions") in keyvault.requests
    assert not list(tmp_path.rglob("*.pfx"))  # the PFX was never written anywhere


def test_cli_backup_that_cannot_get_its_certificate_writes_nothing(
    keyvault: KeyVaultStandIn, certs: list[GeneratedCertificate], vault_env: Path,
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    keyvault.add_certificate("backup", certs[0].pfx, PASSWORD)
    keyvault.deny = 403

    code, out, err = _cli(capsys, "backup", "--json")

    assert code == 1
    assert json.loads(out)["error"]["alert"] == Alert.AUTHENTICATION.title
    assert "Key Vault Reader" in err
    assert list((tmp_path / "share").rglob("*")) == []


def test_cli_keygen_into_key_vault_prints_both_urls(keyvault, vault_env, capsys):
    code, out, err = _cli(
        capsys, "keygen", "--key-vault", keyvault.url, "--name", "fromcli", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["certificateUrl"] == f"{keyvault.url}/certificates/fromcli"
    assert data["secretUrl"] == f"{keyvault.url}/secrets/fromcli"
    assert ("POST", "/certificates/fromcli/import") in keyvault.requests
