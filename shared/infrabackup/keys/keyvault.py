"""Certificates and secrets from Azure Key Vault: the CER, the PFX, the legacy key, keygen.

Settings may name Key Vault objects by URL instead of files::

    BACKUP_ENCRYPTION_CERT   https://<vault>.vault.azure.net/certificates/<name>[/<version>]
    BACKUP_DECRYPTION_CERT   https://<vault>.vault.azure.net/secrets/<name>[/<version>]
                             (a certificates/ URL is accepted too: it means the secret of
                             the same name and version, where Key Vault keeps the PFX)
    BACKUP_ENCRYPTION_KEY    https://<vault>.vault.azure.net/secrets/<name>[/<version>]

Without a version the current version is used. The vault host may carry any cloud's
vault suffix (``.vault.azure.net``, ``.vault.azure.cn``, ``.vault.usgovcloudapi.net``,
an Azure Stack Hub ``.vault.<region>.<fqdn>``) or be a loopback address (a local
stand-in for tests): the real clients stay in charge of security either way, with TLS
verification and the challenge-resource check on, so a token is only ever sent to a host
inside the resource domain the vault itself announced.

The clients are the real ``azure-keyvault-certificates`` / ``azure-keyvault-secrets``
clients, built by :class:`KeyVaultAccess` (credential plus client options):
:meth:`KeyVaultAccess.default` in production (``DefaultAzureCredential`` with
``AZURE_CLIENT_ID`` for a user-assigned managed identity), or one injected by tests.

Failures are translated here, at the boundary, into :mod:`infrabackup.errors`:

=====================================================  ===================================
Key Vault / azure-core                                  infrabackup error (alert)
=====================================================  ===================================
unreachable vault (refused, reset, timeout)             ConnectivityError (connectivity)
vault host name does not resolve                        PathError (path)
no token (credential), 401, 403 (RBAC / access policy)  AuthenticationError (authentication)
certificate / secret / version not found (404)          PathError (path)
object or version disabled (403 SecretDisabled,         KeyMaterialError (general)
``attributes.enabled`` false)
anything else (429, 5xx, unexpected answers)            GeneralFault (general, retryable)
=====================================================  ===================================

A disabled object is a KeyMaterialError, not an authentication issue: the identity and
its role are fine, an operator deliberately switched that key material off, and the
authentication alert's remediation ("update credentials") would send them the wrong way.

The PFX (and the legacy key) live only in memory: nothing fetched here is written to
disk, logged, or put in a message. Messages name vaults, objects, versions, thumbprints.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import logging
import os
import re
import secrets as _random
import socket
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from azure.core.credentials import TokenCredential
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.keyvault.certificates import (
    CertificateClient,
    CertificateContentType,
    CertificatePolicy,
    KeyType,
)
from azure.keyvault.secrets import SecretClient
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from infrabackup.errors import (
    AuthenticationError,
    ConfigError,
    ConnectivityError,
    GeneralFault,
    InfraBackupError,
    KeyMaterialError,
    PathError,
)
from infrabackup.inputs import load_json
from infrabackup.keys.wrap import generate_certificate, load_pfx, parse_certificate, thumbprints

log = logging.getLogger("infrabackup.keyvault")

PKCS12_CONTENT_TYPE = "application/x-pkcs12"
PEM_CONTENT_TYPE = "application/x-pem-file"

_EXAMPLE_VAULT = "https://contoso-backup.vault.azure.net"
# Key Vault names: 3-24 letters, digits and hyphens, starting with a letter, ending with
# a letter or digit, no two hyphens in a row.
_VAULT_NAME_RE = re.compile(r"^(?!.*--)[a-z][a-z0-9-]{1,22}[a-z0-9]$")
_OBJECT_NAME_RE = re.compile(r"^[0-9A-Za-z-]{1,127}$")
_VERSION_RE = re.compile(r"^[0-9A-Fa-f]{32}$")
_KINDS = ("certificates", "secrets")


# --- URLs ----------------------------------------------------------------------------


def is_key_vault_url(value: str | None) -> bool:
    """True when a setting's value is a URL (and so must be a Key Vault URL), not a path."""
    return bool(value) and str(value).strip().lower().startswith(("https://", "http://"))


@dataclass(frozen=True)
class VaultObjectUrl:
    """A parsed Key Vault object URL: ``<vault_url>/<kind>/<name>[/<version>]``.

    ``vault`` is the short name shown in messages (the vault name, or host:port for a
    loopback stand-in); ``version`` is None for "the current version".
    """

    vault_url: str
    vault: str
    kind: str
    name: str
    version: str | None = None

    def __str__(self) -> str:
        return self.versioned(self.version)

    def versioned(self, version: str | None) -> str:
        """This object's URL for ``version`` (None: the version-less URL)."""
        tail = f"/{version}" if version else ""
        return f"{self.vault_url}/{self.kind}/{self.name}{tail}"

    def as_kind(self, kind: str) -> VaultObjectUrl:
        """The same name and version as another kind (a certificate's secret)."""
        return VaultObjectUrl(self.vault_url, self.vault, kind, self.name, self.version)

    @property
    def what(self) -> str:
        """``certificate <name>[ version <v>] in vault <vault>``, for messages."""
        noun = "certificate" if self.kind == "certificates" else "secret"
        ver = f" version {self.version}" if self.version else ""
        return f"{noun} {self.name}{ver} in vault {self.vault}"


def parse_vault_url(value: str, setting: str) -> tuple[str, str]:
    """(vault URL ``https://host[:port]``, short vault name) of a vault URL.

    Accepts ``<vault>.vault.<cloud suffix>`` hosts and loopback addresses; raises a
    ConfigError naming ``setting`` with an example otherwise.
    """
    text = value.strip()
    parts = urlsplit(text)
    example = f"Example: {_EXAMPLE_VAULT}"
    if parts.scheme.lower() != "https":
        raise ConfigError(f"{setting}: '{text}' is not an https:// URL; Key Vault is only "
                          f"reached over HTTPS. {example}", setting=setting)
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError(f"{setting}: '{text}' must not have a query, fragment or user "
                          f"name. {example}", setting=setting)
    try:
        host = (parts.hostname or "").lower()
        port = parts.port
    except ValueError:
        raise ConfigError(f"{setting}: '{text}' has an invalid port. {example}",
                          setting=setting) from None
    netloc = host if port in (None, 443) else f"{host}:{port}"
    if ":" in host:
        netloc = f"[{host}]" if port in (None, 443) else f"[{host}]:{port}"
    if _is_loopback(host):
        return f"https://{netloc}", netloc
    labels = host.split(".")
    if len(labels) < 4 or labels[1] != "vault" or not all(labels):
        raise ConfigError(
            f"{setting}: '{host}' is not a Key Vault host name (<vault>.vault.azure.net, or "
            f"another cloud's vault suffix such as .vault.azure.cn or .vault.usgovcloudapi."
            f"net). {example}", setting=setting)
    if not _VAULT_NAME_RE.fullmatch(labels[0]):
        raise ConfigError(
            f"{setting}: '{labels[0]}' is not a Key Vault name (3-24 letters, digits and "
            f"hyphens, starting with a letter). {example}", setting=setting)
    return f"https://{netloc}", labels[0]


def parse_object_url(value: str, setting: str, kinds: tuple[str, ...]) -> VaultObjectUrl:
    """Parse ``https://<vault host>/<kind>/<name>[/<version>]`` for ``setting``.

    ``kinds`` is what the setting accepts (``certificates``, ``secrets``). Raises a
    ConfigError naming the setting, what is wrong and an example of a good value.
    """
    example = f"Example: {_EXAMPLE_VAULT}/{kinds[0]}/infrabackup"
    vault_url, vault = parse_vault_url(value, setting)
    path = urlsplit(value.strip()).path
    segments = path.strip("/").split("/") if path.strip("/") else []
    if not 2 <= len(segments) <= 3 or segments[0].lower() not in _KINDS:
        raise ConfigError(
            f"{setting}: '{value.strip()}' names no Key Vault {' or '.join(kinds)} object; "
            f"the path must be /{kinds[0]}/<name>[/<version>]. {example}", setting=setting)
    kind = segments[0].lower()
    if kind not in kinds:
        hint = (
            "new backups need only the public certificate, read from /certificates/ (the "
            "'Key Vault Reader' role is enough; the secret holds the private key)"
            if kind == "secrets"
            else "this setting takes a secret"
        )
        raise ConfigError(
            f"{setting}: '{value.strip()}' is a {kind[:-1]} URL; {hint}. {example}",
            setting=setting)
    name = segments[1]
    if not _OBJECT_NAME_RE.fullmatch(name):
        raise ConfigError(
            f"{setting}: '{name}' is not a Key Vault object name (1-127 letters, digits and "
            f"hyphens). {example}", setting=setting)
    version = segments[2] if len(segments) == 3 else None
    if version is not None and not _VERSION_RE.fullmatch(version):
        raise ConfigError(
            f"{setting}: '{version}' is not a Key Vault version id (32 hex digits); leave "
            f"it out for the current version. {example}", setting=setting)
    return VaultObjectUrl(vault_url, vault, kind, name, version.lower() if version else None)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --- access: credential + client options ----------------------------------------------


@dataclass(frozen=True)
class KeyVaultAccess:
    """How to reach Key Vault: a credential and the clients' keyword options.

    Production uses :meth:`default`. Tests build one with their own credential object
    and options (``connection_verify`` for a test CA, ``retry_total=0``); the clients and
    their pipeline are the same either way.
    """

    credential: TokenCredential
    client_options: Mapping[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"KeyVaultAccess(credential={type(self.credential).__name__})"

    @classmethod
    def default(cls, environ: Mapping[str, str] | None = None) -> KeyVaultAccess:
        """``DefaultAzureCredential``: managed identity in Azure, developer logins locally.

        ``AZURE_CLIENT_ID`` selects a user-assigned managed identity. A few retries with
        bounded timeouts: a vault that cannot answer must fail the run in seconds, not
        hang it (azure-core's defaults retry for minutes).
        """
        from azure.identity import DefaultAzureCredential  # heavy import, only when used

        env = os.environ if environ is None else environ
        client_id = env.get("AZURE_CLIENT_ID") or None
        credential = DefaultAzureCredential(managed_identity_client_id=client_id)
        return cls(
            credential,
            {"retry_total": 3, "retry_backoff_max": 8, "connection_timeout": 10,
             "read_timeout": 30},
        )

    def certificate_client(self, vault_url: str) -> CertificateClient:
        return CertificateClient(vault_url, self.credential, **dict(self.client_options))

    def secret_client(self, vault_url: str) -> SecretClient:
        return SecretClient(vault_url, self.credential, **dict(self.client_options))


# --- error translation ----------------------------------------------------------------


def _error_codes(exc: HttpResponseError) -> tuple[str, str]:
    """(error code, inner error code) of a Key Vault error answer; '' when absent."""
    try:
        body = (load_json(exc.response.text(), max_bytes=64 * 1024)
                if exc.response is not None else {})
    except (ValueError, TypeError):  # a non-JSON (or huge, deep) error body has no codes
        return "", ""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return "", ""
    inner = error.get("innererror")
    inner_code = inner.get("code", "") if isinstance(inner, dict) else ""
    return str(error.get("code", "")), str(inner_code)


_DNS_FAILURE_SIGNS = (
    "Name or service not known", "nodename nor servname", "Failed to resolve",
    "No address associated with hostname", "getaddrinfo failed",
)


def _resolves(exc: BaseException) -> bool:
    """False when the exception chain shows a DNS failure (the host name is wrong)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, socket.gaierror):
            return False
        text = str(seen)
        if any(sign in text for sign in _DNS_FAILURE_SIGNS):
            return False
        seen = seen.__cause__ or seen.__context__
    return True


# Least privilege: reading a certificate's public part needs only certificates/read,
# which 'Key Vault Reader' grants; 'Key Vault Certificate User' would also let the
# backup identity read the PFX through the secret, which only restore may do.
_ROLE_HINT = {
    "certificates": "Key Vault Reader",
    "secrets": "Key Vault Secrets User",
}


@contextmanager
def translated(obj: VaultObjectUrl, setting: str, action: str = "read") -> Iterator[None]:
    """Translate azure-core exceptions raised inside into one :mod:`infrabackup.errors` error.

    ``obj`` and ``setting`` only shape the message (what, which setting); ``action`` is
    the verb ("read", "import", "list the versions of").
    """
    where = f"{setting}: cannot {action} {obj.what}"
    identity = ("the function app's managed identity (AZURE_CLIENT_ID for a user-assigned "
                "one), or your 'az login' account locally")
    role = "Key Vault Certificates Officer" if action == "import" else _ROLE_HINT[obj.kind]
    try:
        yield
    except InfraBackupError:
        raise
    except ResourceNotFoundError as exc:
        noun = "certificate" if obj.kind == "certificates" else "secret"
        ver = f" version {obj.version}" if obj.version else ""
        raise PathError(
            f"{setting}: {noun} {obj.name}{ver} not found in vault {obj.vault}. Check the "
            f"name (and version) in the URL, or import the certificate with 'infrabackup "
            f"keygen --key-vault {obj.vault_url} --name {obj.name}'.",
            status="404",
        ) from exc
    except ClientAuthenticationError as exc:
        if exc.response is None:
            # No HTTP answer: the credential itself could not produce a token.
            raise AuthenticationError(
                f"{where}: no access token could be obtained for {identity}. Enable the "
                f"managed identity, or sign in with 'az login'.",
            ) from exc
        raise AuthenticationError(
            f"{where}: the vault refused the token (HTTP {exc.status_code}). Check that "
            f"{identity} belongs to the vault's tenant and has the '{role}' role.",
            status=str(exc.status_code),
        ) from exc
    except HttpResponseError as exc:
        status = exc.status_code
        code, inner = _error_codes(exc)
        if status == 403 and (inner.endswith("Disabled") or "disabled" in str(exc.message)):
            raise KeyMaterialError(
                f"{where}: it is disabled in Key Vault. Enable it, or point {setting} at an "
                f"enabled version (rotate with 'infrabackup keygen --key-vault').",
                status="403",
            ) from exc
        if status in (401, 403):
            raise AuthenticationError(
                f"{where}: access denied (HTTP {status}{' ' + inner if inner else ''}). "
                f"Grant {identity} the '{role}' role on the vault (RBAC), or the matching "
                f"access policy.",
                status=str(status),
            ) from exc
        if status == 404:
            raise PathError(
                f"{where}: not found (HTTP 404 {code}). Check the vault URL.", status="404"
            ) from exc
        raise GeneralFault(
            f"{where}: Key Vault answered HTTP {status} {code}. Try again; if it persists, "
            "check the vault's health in the Azure portal.",
            status=str(status) if status else None,
        ) from exc
    except ServiceRequestError as exc:
        if not _resolves(exc):
            raise PathError(
                f"{where}: the host of {obj.vault_url} does not resolve. Check the vault "
                f"name in {setting}. Example: {_EXAMPLE_VAULT}/{obj.kind}/{obj.name}",
            ) from exc
        raise ConnectivityError(
            f"{where}: the vault at {obj.vault_url} cannot be reached "
            f"({type(exc).__name__}). Check the network path (firewall, private endpoint, "
            "DNS) from the function app to the vault.",
        ) from exc
    except ServiceResponseError as exc:
        raise ConnectivityError(
            f"{where}: the connection to {obj.vault_url} broke before the answer came "
            f"({type(exc).__name__}). Try again.",
        ) from exc
    except ValueError as exc:
        # The SDK raises ValueError when a server's challenge names a resource its host
        # is not part of: the URL does not point at a genuine vault of that cloud.
        raise AuthenticationError(
            f"{where}: the server at {obj.vault_url} did not present a valid Key Vault "
            "authentication challenge. Check the vault URL.",
        ) from exc
    except (AzureError, OSError) as exc:
        # Whatever else the SDK or its transport raises (a body that does not decode, a
        # stream error): not one of the four specific faults.
        raise GeneralFault(
            f"{where}: the Key Vault call failed ({type(exc).__name__}). Try again; if it "
            "persists, check the vault's health.",
        ) from exc


# --- certificates (CER) ----------------------------------------------------------------


@dataclass(frozen=True)
class FetchedCertificate:
    """The public certificate of one Key Vault certificate version."""

    certificate: x509.Certificate
    url: VaultObjectUrl  # with the version actually fetched

    @property
    def thumbprint(self) -> str:
        return thumbprints(self.certificate)[0]


def fetch_certificate(
    url: VaultObjectUrl, access: KeyVaultAccess, setting: str = "BACKUP_ENCRYPTION_CERT"
) -> FetchedCertificate:
    """The CER of ``url`` (its current version when the URL has none) via CertificateClient.

    Raises KeyMaterialError when that version is disabled or holds no certificate yet.
    """
    with translated(url, setting), access.certificate_client(url.vault_url) as client:
        if url.version:
            found = client.get_certificate_version(url.name, url.version)
        else:
            found = client.get_certificate(url.name)
    props = found.properties
    fetched = VaultObjectUrl(url.vault_url, url.vault, "certificates", url.name,
                             (props.version if props else None) or url.version)
    if props is not None and props.enabled is False:
        raise KeyMaterialError(
            f"{setting}: {fetched.what} is disabled in Key Vault. Enable it, or rotate with "
            f"'infrabackup keygen --key-vault {url.vault_url} --name {url.name}'.",
        )
    if not found.cer:
        raise KeyMaterialError(
            f"{setting}: {fetched.what} holds no issued certificate yet (pending or failed "
            "creation). Complete or re-import it.",
        )
    cert = parse_certificate(bytes(found.cer), f"{setting}: {fetched}")
    log.info("Key Vault certificate %s: thumbprint %s", fetched, thumbprints(cert)[0])
    return FetchedCertificate(cert, fetched)


# --- secrets (PFX, legacy key) ---------------------------------------------------------


@dataclass(frozen=True)
class FetchedIdentity:
    """A private key and its certificate from one secret version (memory only)."""

    private_key: rsa.RSAPrivateKey
    certificate: x509.Certificate
    url: VaultObjectUrl

    def __repr__(self) -> str:  # the private key must never be printed
        return f"FetchedIdentity(url={self.url}, thumbprint={self.thumbprint})"

    @property
    def thumbprint(self) -> str:
        return thumbprints(self.certificate)[0]


def _get_secret(
    client: SecretClient, url: VaultObjectUrl, version: str | None
) -> tuple[str, str | None, str | None]:
    """(value, content type, version) of one secret version; the value stays in memory."""
    secret = client.get_secret(url.name, version or None)
    if secret.properties.enabled is False:
        raise KeyMaterialError(
            f"{url.as_kind('secrets').what} is disabled in Key Vault; enable it or use "
            "an enabled version."
        )
    return secret.value or "", secret.properties.content_type, secret.properties.version


def _identity_from_secret(
    value: str, content_type: str | None, password: str | None, what: str
) -> tuple[Any, x509.Certificate]:
    """(private key, certificate) from a secret holding a PFX (base64) or a PEM bundle."""
    if (content_type or "").lower() == PEM_CONTENT_TYPE or value.lstrip().startswith("-----"):
        data = value.encode()
        try:
            key = serialization.load_pem_private_key(
                data, password.encode() if password else None
            )
            cert = x509.load_pem_x509_certificate(data)
        except (ValueError, TypeError):
            raise KeyMaterialError(
                f"{what} is not a PEM private key and certificate (or its password is wrong)."
            ) from None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise KeyMaterialError(f"{what}: the private key is not RSA.")
        return key, cert
    try:
        pfx = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise KeyMaterialError(
            f"{what} does not hold a base64 PFX ({PKCS12_CONTENT_TYPE}) or a PEM bundle. "
            "Import the certificate with its private key into Key Vault."
        ) from None
    # Key Vault stores an imported certificate's PFX without password; a PFX uploaded as
    # a plain secret keeps its own, which BACKUP_DECRYPTION_CERT_PASSWORD supplies.
    try:
        return load_pfx(pfx, None, what)
    except KeyMaterialError:
        if not password:
            raise
    return load_pfx(pfx, password, what)


def fetch_identity(
    url: VaultObjectUrl,
    access: KeyVaultAccess,
    password: str | None = None,
    setting: str = "BACKUP_DECRYPTION_CERT",
) -> FetchedIdentity:
    """The PFX of ``url`` (a secret, or a certificate's secret) via SecretClient."""
    secret_url = url.as_kind("secrets")
    with translated(secret_url, setting), access.secret_client(url.vault_url) as client:
        value, content_type, version = _get_secret(client, secret_url, url.version)
    fetched = VaultObjectUrl(secret_url.vault_url, secret_url.vault, "secrets",
                             secret_url.name, version or url.version)
    key, cert = _identity_from_secret(value, content_type, password, f"{setting}: {fetched}")
    del value
    log.info("Key Vault PFX %s: thumbprint %s", fetched, thumbprints(cert)[0])
    return FetchedIdentity(key, cert, fetched)


def identity_finder(
    url: VaultObjectUrl,
    access: KeyVaultAccess,
    password: str | None = None,
    setting: str = "BACKUP_DECRYPTION_CERT",
    known: Mapping[str, str] | None = None,
) -> Callable[[str], tuple[Any, x509.Certificate] | None]:
    """A ``KeyRing.lookup``: finds the PFX with a thumbprint among the secret's versions.

    After a rotation the secret's current version holds the new certificate; a backup
    made before it needs an older version. The finder lists the versions (newest first),
    skips disabled ones and versions in ``known`` (version -> thumbprint, already held),
    and opens each PFX in memory until the thumbprint matches. Found identities are kept
    (in memory) for the next backup. When none matches it raises KeyMaterialError naming
    the thumbprint needed and what was searched.
    """
    secret_url = url.as_kind("secrets")
    seen: dict[str, str] = dict(known or {})  # version -> thumbprint
    found: dict[str, tuple[Any, x509.Certificate]] = {}

    def lookup(thumbprint: str) -> tuple[Any, x509.Certificate] | None:
        wanted = thumbprint.upper()
        if wanted in found:
            return found[wanted]
        with translated(secret_url, setting, "list the versions of"), \
                access.secret_client(url.vault_url) as client:
            versions = list(client.list_properties_of_secret_versions(secret_url.name))
            versions.sort(key=lambda p: (p.created_on is not None, p.created_on), reverse=True)
            disabled = 0
            for props in versions:
                if not props.version or props.version in seen:
                    continue
                if props.enabled is False:
                    disabled += 1
                    continue
                try:
                    value, content_type, _ = _get_secret(client, secret_url, props.version)
                except KeyMaterialError:
                    disabled += 1  # disabled between listing and reading
                    continue
                what = f"{setting}: {secret_url.versioned(props.version)}"
                try:
                    key, cert = _identity_from_secret(value, content_type, password, what)
                except KeyMaterialError:
                    log.info("Key Vault %s: version %s holds no usable PFX; skipped",
                             secret_url.name, props.version)
                    continue
                finally:
                    del value
                sha1 = thumbprints(cert)[0]
                seen[props.version] = sha1
                if sha1 == wanted:
                    log.info("Key Vault PFX for thumbprint %s found in %s version %s",
                             sha1, secret_url.name, props.version)
                    found[sha1] = (key, cert)
                    return key, cert
        note = f" ({disabled} disabled version(s) skipped)" if disabled else ""
        raise KeyMaterialError(
            f"Wrong certificate: this backup was encrypted with the certificate {wanted}, and "
            f"no enabled version of secret '{secret_url.name}' in vault {secret_url.vault} "
            f"({setting}) holds it{note}. Import the PFX whose thumbprint is {wanted} as a "
            "new version of that certificate, or enable its version.",
        )

    return lookup


def fetch_secret_value(url: VaultObjectUrl, access: KeyVaultAccess, setting: str) -> str:
    """The value of a secret (the legacy key), in memory only."""
    with translated(url, setting), access.secret_client(url.vault_url) as client:
        value, _, version = _get_secret(client, url, url.version)
    log.info("Key Vault secret %s read for %s", url.versioned(version or url.version), setting)
    return value


# --- keygen into Key Vault ---------------------------------------------------------------


@dataclass(frozen=True)
class ImportedCertificate:
    """What ``keygen --key-vault`` made: the URLs operators set, and the new version.

    ``certificate_url`` (for BACKUP_ENCRYPTION_CERT) and ``secret_url`` (for
    BACKUP_DECRYPTION_CERT) carry no version, so later rotations are picked up by new
    backups and old backups are still found through the secret's versions.
    """

    certificate_url: str
    secret_url: str
    certificate_id: str  # versioned
    version: str
    thumbprint: str
    thumbprint_sha256: str
    not_after: str

    def to_dict(self) -> dict[str, str]:
        return {
            "certificateUrl": self.certificate_url,
            "secretUrl": self.secret_url,
            "certificateId": self.certificate_id,
            "version": self.version,
            "thumbprint": self.thumbprint,
            "thumbprintSha256": self.thumbprint_sha256,
            "notAfter": self.not_after,
        }


def import_certificate(
    vault_url: str,
    name: str,
    pfx: bytes,
    password: str | None,
    access: KeyVaultAccess | None = None,
    setting: str = "--key-vault",
) -> ImportedCertificate:
    """Import a PFX as (a new version of) Key Vault certificate ``name``.

    Importing over an existing name is a rotation: a new version becomes current. The
    policy keeps the private key exportable, because restore reads the PFX back through
    the certificate's secret. Needs the 'Key Vault Certificates Officer' role.
    """
    base, vault = parse_vault_url(vault_url.rstrip("/"), setting)
    if urlsplit(vault_url.strip()).path.strip("/"):
        raise ConfigError(
            f"{setting}: '{vault_url}' must be the vault URL alone, without a path. "
            f"Example: {_EXAMPLE_VAULT}", setting=setting)
    if not _OBJECT_NAME_RE.fullmatch(name):
        raise ConfigError(
            f"--name: '{name}' is not a Key Vault certificate name (1-127 letters, digits and "
            "hyphens). Example: infrabackup.", setting="--name")
    access = access or KeyVaultAccess.default()
    obj = VaultObjectUrl(base, vault, "certificates", name)
    key, cert = load_pfx(pfx, password, f"{setting}: the generated PFX")
    policy = CertificatePolicy(
        issuer_name="Unknown",  # imported, self-signed: Key Vault does not renew it
        subject=cert.subject.rfc4514_string(),
        exportable=True,
        key_type=KeyType.rsa,
        key_size=key.key_size,
        reuse_key=False,
        content_type=CertificateContentType.pkcs12,
    )
    with translated(obj, setting, "import"), access.certificate_client(base) as client:
        imported = client.import_certificate(
            name, pfx, password=password, policy=policy, enabled=True
        )
    version = (imported.properties.version if imported.properties else None) or ""
    sha1, sha256 = thumbprints(cert)
    result = ImportedCertificate(
        certificate_url=obj.versioned(None),
        secret_url=obj.as_kind("secrets").versioned(None),
        certificate_id=obj.versioned(version),
        version=version,
        thumbprint=sha1,
        thumbprint_sha256=sha256,
        not_after=cert.not_valid_after_utc.isoformat(),
    )
    log.info("Imported certificate %s version %s, thumbprint %s", name, version, sha1)
    return result


def keygen_to_vault(
    vault_url: str,
    name: str,
    *,
    access: KeyVaultAccess | None = None,
    days: int = 730,
    bits: int = 3072,
) -> ImportedCertificate:
    """``keygen --key-vault URL --name N``: a new self-signed certificate, imported.

    The PFX exists only in memory, protected by a one-time random password for the
    upload (Key Vault keeps it without that password); nothing is written to disk.
    """
    parse_vault_url(vault_url.rstrip("/"), "--key-vault")  # fail before the slow keygen
    if not _OBJECT_NAME_RE.fullmatch(name):
        raise ConfigError(
            f"--name: '{name}' is not a Key Vault certificate name (1-127 letters, digits and "
            "hyphens). Example: infrabackup.", setting="--name")
    password = _random.token_urlsafe(24)
    generated = generate_certificate(name, password, days=days, bits=bits)
    return import_certificate(vault_url, name, generated.pfx, password, access)
