"""A minimal local HTTPS Key Vault stand-in for the real ``azure-keyvault-*`` clients.

No Key Vault emulator exists, so the tests run the production SDK against this server at
the protocol boundary. It implements exactly what our code paths send:

* challenge authentication: a request without a valid bearer token is answered
  ``401`` with ``WWW-Authenticate: Bearer authorization=..., resource=...``;
* ``GET /certificates/{name}[/{version}]`` (the CER, ``x5t``, attributes);
* ``GET /secrets/{name}[/{version}]`` and ``GET /secrets/{name}/versions``;
* ``POST /certificates/{name}/import`` (a PFX becomes a new version of the certificate
  and of its secret, the secret holding the PFX *without* password, as Key Vault does);
* an App Service managed-identity token endpoint (``GET /msi/token``, the
  ``IDENTITY_ENDPOINT`` protocol) so ``DefaultAzureCredential`` works unchanged.

The challenge announces the resource ``https://0.0.1:<port>``: a real vault announces a
resource its host name ends with (``*.vault.azure.net`` -> ``https://vault.azure.net``),
and ``127.0.0.1:<port>`` ends with ``.0.0.1:<port>``, so the SDK's challenge-resource check
stays ON and the production client configuration works against this server too.

Switches: ``deny`` (answer every authenticated request 401, 403, 429 or 5xx), ``disable()`` an
object version, and ``down()`` (stop listening: connection refused) / ``up()``.
Nothing here is production code; it never logs request bodies (they hold PFX bytes).
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import secrets
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from azure.core.credentials import AccessToken
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
PKCS12 = "application/x-pkcs12"


@dataclass
class _Version:
    """One version of a secret (and, for certificates, of the certificate too)."""

    version: str
    value: str
    content_type: str | None
    created: int
    enabled: bool = True
    cer: bytes | None = None  # DER, only for certificate-backed versions


@dataclass
class _Objects:
    versions: dict[str, list[_Version]] = field(default_factory=dict)

    def add(self, name: str, version: _Version) -> None:
        self.versions.setdefault(name, []).append(version)

    def find(self, name: str, version: str | None) -> _Version | None:
        found = self.versions.get(name) or []
        if not found:
            return None
        if not version:
            return found[-1]  # the current version is the newest one
        return next((v for v in found if v.version == version), None)


class StaticCredential:
    """A credential object (``get_token``) handing out one opaque token; counts calls."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.scopes: list[str] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.scopes.extend(scopes)
        return AccessToken(self.token, int(time.time()) + 3600)


class KeyVaultStandIn:
    """The running stand-in. ``url`` is the vault URL, ``ca_file`` the CA to trust."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.ca_file, self._cert_file, self._key_file = _make_tls_files(folder)
        self.identity_header = secrets.token_hex(16)
        self.tokens: set[str] = set()
        self.deny: int | None = None
        self.certificates = _Objects()
        self.secrets = _Objects()
        self.requests: list[tuple[str, str]] = []
        self.msi_requests: list[dict[str, list[str]]] = []
        self.bodies: list[bytes] = []  # request bodies, for leak checks only
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = _free_port()
        self.up()

    # --- lifecycle --------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def resource(self) -> str:
        return f"https://0.0.1:{self.port}"

    def up(self) -> None:
        """Listen (again) on the same port."""
        if self._server is not None:
            return
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self._cert_file, self._key_file)
        server = ThreadingHTTPServer(("127.0.0.1", self.port), _handler_for(self))
        server.daemon_threads = True
        server.socket = context.wrap_socket(server.socket, server_side=True)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()

    def down(self) -> None:
        """Stop listening: clients get connection refused at once."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)
        self._server = None

    def reset(self) -> None:
        """Forget all objects and switches (between tests)."""
        with self._lock:
            self.certificates = _Objects()
            self.secrets = _Objects()
            self.deny = None
            self.requests.clear()
            self.bodies.clear()
        self.up()

    # --- credentials and client options for tests --------------------------------------

    def credential(self) -> StaticCredential:
        token = "tok-" + secrets.token_hex(16)
        self.tokens.add(token)
        return StaticCredential(token)

    def client_options(self) -> dict[str, Any]:
        """Client keyword arguments: trust our CA, fail fast (no retries)."""
        return {"connection_verify": self.ca_file, "retry_total": 0}

    def managed_identity_env(self) -> dict[str, str]:
        """Environment of an App Service managed identity served by this stand-in."""
        return {
            "IDENTITY_ENDPOINT": f"{self.url}/msi/token",
            "IDENTITY_HEADER": self.identity_header,
            "REQUESTS_CA_BUNDLE": self.ca_file,
        }

    # --- objects ----------------------------------------------------------------

    def add_certificate(self, name: str, pfx: bytes, password: str | None = None) -> str:
        """A new version of certificate ``name`` (and of its secret) from a PFX."""
        key, cert, _ = pkcs12.load_key_and_certificates(
            pfx, password.encode() if password else None
        )
        assert key is not None and cert is not None
        # Key Vault keeps the PFX without its import password in the certificate's secret.
        plain = pkcs12.serialize_key_and_certificates(
            name.encode(), key, cert, None, serialization.NoEncryption()  # type: ignore[arg-type]
        )
        version = secrets.token_hex(16)
        now = int(time.time()) + len(self.secrets.versions.get(name, []))
        der = cert.public_bytes(serialization.Encoding.DER)
        with self._lock:
            self.certificates.add(name, _Version(version, "", None, now, cer=der))
            self.secrets.add(
                name, _Version(version, base64.b64encode(plain).decode(), PKCS12, now, cer=der)
            )
        return version

    def add_secret(self, name: str, value: str, content_type: str | None = None) -> str:
        version = secrets.token_hex(16)
        now = int(time.time()) + len(self.secrets.versions.get(name, []))
        with self._lock:
            self.secrets.add(name, _Version(version, value, content_type, now))
        return version

    def disable(self, kind: str, name: str, version: str | None = None) -> None:
        """Disable one version (default: the current one) of a certificate or secret."""
        store = self.certificates if kind == "certificates" else self.secrets
        found = store.find(name, version)
        assert found is not None
        found.enabled = False
        if kind == "certificates":
            # A certificate's secret is the same object in Key Vault: disabled together.
            twin = self.secrets.find(name, found.version)
            if twin is not None:
                twin.enabled = False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _make_tls_files(folder: Path) -> tuple[str, str, str]:
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it."""
    now = dt.datetime.now(dt.UTC)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "infrabackup test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_file = folder / "ca.pem"
    cert_file = folder / "server.pem"
    key_file = folder / "server.key"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(ca_file), str(cert_file), str(key_file)


def _handler_for(vault: KeyVaultStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            """Silent: the default handler writes every request line to stderr."""

        # --- plumbing -------------------------------------------------------

        def _send(self, status: int, body: object, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, code: str, message: str, inner: str | None = None) -> None:
            error: dict[str, Any] = {"code": code, "message": message}
            if inner:
                error["innererror"] = {"code": inner}
            self._send(status, {"error": error})

        def _challenge(self, error: str | None = None) -> None:
            challenge = (
                f'Bearer authorization="https://login.microsoftonline.com/{TENANT}", '
                f'resource="{vault.resource}"'
            )
            if error:
                challenge += f', error="{error}"'
            self._send(
                401,
                {"error": {"code": "Unauthorized", "message": "AKV10000: Request is missing a "
                           "Bearer or PoP token."}},
                {"WWW-Authenticate": challenge},
            )

        def _body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            data = self.rfile.read(length) if length else b""
            vault.bodies.append(data)
            return data

        def _authorised(self) -> bool:
            auth = self.headers.get("Authorization", "")
            token = auth[len("Bearer "):] if auth.startswith("Bearer ") else ""
            if token not in vault.tokens:
                self._challenge("invalid_token" if token else None)
                return False
            if vault.deny == 401:
                self._challenge("invalid_token")
                return False
            if vault.deny == 403:
                self._error(
                    403, "Forbidden",
                    "Caller is not authorized to perform action on resource.",
                    "ForbiddenByRbac",
                )
                return False
            if vault.deny is not None:  # 429 throttled, 5xx service trouble
                self._error(vault.deny, "ServiceUnavailable" if vault.deny >= 500
                            else "Throttled", "Try again later.")
                return False
            return True

        # --- routes -----------------------------------------------------------

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            vault.requests.append(("GET", parts.path))
            if parts.path == "/msi/token":
                self._msi_token(parse_qs(parts.query))
                return
            self._body()
            if not self._authorised():
                return
            segments = [s for s in parts.path.split("/") if s]
            if len(segments) in (2, 3) and segments[0] == "certificates":
                self._get_certificate(segments[1], segments[2] if len(segments) == 3 else None)
            elif len(segments) == 3 and segments[0] == "secrets" and segments[2] == "versions":
                self._list_secret_versions(segments[1])
            elif len(segments) in (2, 3) and segments[0] == "secrets":
                self._get_secret(segments[1], segments[2] if len(segments) == 3 else None)
            else:
                self._error(400, "BadParameter", f"Unsupported path {parts.path}")

        def do_POST(self) -> None:
            parts = urlsplit(self.path)
            vault.requests.append(("POST", parts.path))
            body = self._body()
            if not self._authorised():
                return
            segments = [s for s in parts.path.split("/") if s]
            if len(segments) == 3 and segments[0] == "certificates" and segments[2] == "import":
                self._import(segments[1], json.loads(body or b"{}"))
            else:
                self._error(400, "BadParameter", f"Unsupported path {parts.path}")

        # --- handlers -----------------------------------------------------------

        def _msi_token(self, query: dict[str, list[str]]) -> None:
            vault.msi_requests.append(query)
            if self.headers.get("X-IDENTITY-HEADER") != vault.identity_header:
                self._send(401, {"error": "unauthorized"})
                return
            token = _jwt_shaped(query)
            vault.tokens.add(token)
            self._send(200, {
                "access_token": token,
                "expires_on": str(int(time.time()) + 3600),
                "resource": (query.get("resource") or [""])[0],
                "token_type": "Bearer",
            })

        def _id(self, kind: str, name: str, version: str) -> str:
            return f"{vault.url}/{kind}/{name}/{version}"

        def _cert_bundle(self, name: str, ver: _Version) -> dict[str, Any]:
            assert ver.cer is not None
            cert = x509.load_der_x509_certificate(ver.cer)
            x5t = base64.urlsafe_b64encode(cert.fingerprint(hashes.SHA1())).rstrip(b"=")  # noqa: S303
            return {
                "id": self._id("certificates", name, ver.version),
                "kid": self._id("keys", name, ver.version),
                "sid": self._id("secrets", name, ver.version),
                "x5t": x5t.decode(),
                "cer": base64.b64encode(ver.cer).decode(),
                "attributes": _attributes(ver, cert),
            }

        def _get_certificate(self, name: str, version: str | None) -> None:
            ver = vault.certificates.find(name, version)
            if ver is None:
                self._error(
                    404, "CertificateNotFound",
                    f"A certificate with (name/id) {name} was not found in this key vault.",
                )
                return
            # Key Vault still returns a disabled certificate's public part, marked disabled.
            self._send(200, self._cert_bundle(name, ver))

        def _get_secret(self, name: str, version: str | None) -> None:
            ver = vault.secrets.find(name, version)
            if ver is None:
                self._error(
                    404, "SecretNotFound",
                    f"A secret with (name/id) {name} was not found in this key vault.",
                )
                return
            if not ver.enabled:
                self._error(
                    403, "Forbidden", "Operation get is not allowed on a disabled secret.",
                    "SecretDisabled",
                )
                return
            body: dict[str, Any] = {
                "value": ver.value,
                "id": self._id("secrets", name, ver.version),
                "attributes": _attributes(ver, None),
            }
            if ver.content_type:
                body["contentType"] = ver.content_type
            if ver.cer is not None:
                body["kid"] = self._id("keys", name, ver.version)
                body["managed"] = True
            self._send(200, body)

        def _list_secret_versions(self, name: str) -> None:
            found = vault.secrets.versions.get(name)
            if not found:
                self._error(
                    404, "SecretNotFound",
                    f"A secret with (name/id) {name} was not found in this key vault.",
                )
                return
            items = []
            for ver in found:
                item: dict[str, Any] = {
                    "id": self._id("secrets", name, ver.version),
                    "attributes": _attributes(ver, None),
                }
                if ver.content_type:
                    item["contentType"] = ver.content_type
                if ver.cer is not None:
                    item["managed"] = True
                items.append(item)
            self._send(200, {"value": items, "nextLink": None})

        def _import(self, name: str, body: dict[str, Any]) -> None:
            try:
                pfx = base64.b64decode(body["value"])
                version = vault.add_certificate(name, pfx, body.get("pwd"))
            except (KeyError, ValueError):
                self._error(
                    400, "BadParameter", "The specified PEM X.509 certificate content is in "
                    "an unexpected format or the password is wrong.",
                )
                return
            ver = vault.certificates.find(name, version)
            assert ver is not None
            bundle = self._cert_bundle(name, ver)
            if body.get("policy"):
                bundle["policy"] = body["policy"]
            self._send(200, bundle)

    return Handler


def _jwt_shaped(query: dict[str, list[str]]) -> str:
    """An opaque token shaped like Entra ID's (azure-identity decodes its claims to log
    the account at DEBUG): header.claims.signature, the signature random."""

    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    claims = {
        "aud": (query.get("resource") or [""])[0],
        "tid": TENANT,
        "appid": (query.get("client_id") or ["system-assigned"])[0],
        "oid": "00000000-0000-0000-0000-0000000000aa",
    }
    signature = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    return f"{part({'typ': 'JWT', 'alg': 'none'})}.{part(claims)}.{signature}"


def _attributes(ver: _Version, cert: x509.Certificate | None) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "enabled": ver.enabled,
        "created": ver.created,
        "updated": ver.created,
        "recoveryLevel": "Recoverable+Purgeable",
    }
    if cert is not None:
        attrs["nbf"] = int(cert.not_valid_before_utc.timestamp())
        attrs["exp"] = int(cert.not_valid_after_utc.timestamp())
    return attrs


@pytest.fixture(scope="session")
def keyvault_server() -> Iterator[KeyVaultStandIn]:
    """One stand-in per test session, on 127.0.0.1 and a free port; always stopped."""
    with tempfile.TemporaryDirectory(prefix="kv-standin-") as folder:
        server = KeyVaultStandIn(Path(folder))
        try:
            yield server
        finally:
            server.down()


@pytest.fixture
def keyvault(keyvault_server: KeyVaultStandIn) -> Iterator[KeyVaultStandIn]:
    """The session's stand-in, emptied and listening, with switches reset."""
    keyvault_server.reset()
    yield keyvault_server
    keyvault_server.reset()
