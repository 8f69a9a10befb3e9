"""The app's own Azure Storage: the job queue and the job-record table in ``AzureWebJobsStorage``.

Two forms of the setting, the same the Functions host accepts:

* a connection string in ``AzureWebJobsStorage`` (``UseDevelopmentStorage=true`` for
  Azurite, or an account key string);
* identity-based, as ``infra/`` deploys it (shared keys are off on the account):
  ``AzureWebJobsStorage__accountName`` (or ``__queueServiceUri`` and
  ``__tableServiceUri``), ``__credential=managedidentity`` and ``__clientId`` for a
  user-assigned identity.

Storage exceptions are translated at this boundary (:func:`translate_storage_errors`):
a storage account that cannot be reached or refuses the app is a
:class:`~infrabackup.errors.ConnectivityError` or :class:`~infrabackup.errors.AuthenticationError`
naming ``AzureWebJobsStorage``; nothing above this module sees an azure-core exception
except the three its callers handle on purpose: an entity that exists, one that does
not, and a conditional write that lost to another writer.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from infrabackup.errors import (
    AuthenticationError,
    ConfigError,
    ConnectivityError,
    GeneralFault,
    InfraBackupError,
)
from infrabackup.layout import StampLayout

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from azure.data.tables import TableClient
    from azure.storage.queue import QueueClient

SETTING = "AzureWebJobsStorage"
#: The job-record table (letters and digits only: Azure table names allow no more).
TABLE_NAME = "infrabackupjobs"
#: The queue the HTTP API and the timer put backup jobs on; the worker's trigger reads it.
QUEUE_NAME = "infrabackup-jobs"
#: Where the Functions host moves a message that failed ``maxDequeueCount`` times.
POISON_QUEUE_NAME = f"{QUEUE_NAME}-poison"
#: host.json's ``extensions.queues.maxDequeueCount``: deliveries before a message is
#: poisoned (tests/test_function_app.py checks that the two agree).
MAX_DEQUEUE_COUNT = 5

_created: set[tuple[str, str]] = set()
_created_lock = threading.Lock()


def stamp_key(layout: StampLayout) -> str:
    """The table partition of a stamp: one stamp is one share lock (domain + region).

    Domains and regions are DNS names and labels, so ``_`` cannot occur in either and
    the key is unambiguous; it holds none of the characters a table key may not.
    """
    return f"{layout.domain}_{layout.region}"


@contextlib.contextmanager
def translate_storage_errors(what: str) -> Iterator[None]:
    """Map azure-core errors of the app's storage to the service's error tree."""
    from azure.core.exceptions import (
        ClientAuthenticationError,
        HttpResponseError,
        ResourceExistsError,
        ResourceModifiedError,
        ResourceNotFoundError,
        ServiceRequestError,
        ServiceResponseError,
    )

    try:
        yield
    except (InfraBackupError, ResourceExistsError, ResourceNotFoundError, ResourceModifiedError):
        raise  # the service's own errors, and the outcomes callers handle on purpose
    except ClientAuthenticationError as exc:
        raise AuthenticationError(
            f"{what}: the storage account in {SETTING} refused the app's credentials "
            f"({_reason(exc)}). Check the connection string, or the identity's Storage "
            "Queue/Table Data Contributor roles.", status=_status(exc)
        ) from exc
    except (ServiceRequestError, ServiceResponseError) as exc:
        raise ConnectivityError(
            f"{what}: the storage account in {SETTING} cannot be reached ({_reason(exc)}).",
        ) from exc
    except HttpResponseError as exc:
        if exc.status_code in (401, 403):
            raise AuthenticationError(
                f"{what}: the storage account in {SETTING} denied access ({_reason(exc)}). "
                "Check the identity's Storage Queue/Table Data Contributor roles.",
                status=_status(exc),
            ) from exc
        if exc.status_code is not None and exc.status_code >= 500:
            raise ConnectivityError(
                f"{what}: the storage account in {SETTING} failed ({_reason(exc)}); it is "
                "worth a retry.", status=_status(exc)
            ) from exc
        raise GeneralFault(f"{what}: {_reason(exc)}", status=_status(exc)) from exc


def _status(exc: Any) -> str | None:
    code = getattr(exc, "status_code", None)
    return f"HTTP {code}" if code else None


def _reason(exc: BaseException) -> str:
    """A short reason from an azure-core error; never a header, a key or a SAS signature
    (urllib3's messages quote the request URL, whose query holds a SAS token's ``sig``)."""
    code = getattr(exc, "error_code", None)
    status = getattr(exc, "status_code", None)
    first = (getattr(exc, "reason", None) or str(exc).split("\n", 1)[0])[:200]
    return _SAS_SIGNATURE.sub(r"\1***", ", ".join(str(p) for p in (status, code, first) if p))


_SAS_SIGNATURE = re.compile(r"(?i)(\bsig=)[^&\s'\"]+")

#: What a connection string may look like, for messages (never the value: it holds a key).
CONNECTION_EXAMPLE = ("UseDevelopmentStorage=true (Azurite), or DefaultEndpointsProtocol=https;"
                      "AccountName=<account>;AccountKey=<base64 key>;EndpointSuffix="
                      "core.windows.net")


def connection_string_problem(value: str, services: tuple[str, ...]) -> str | None:
    """Why ``value`` is not a storage connection string the Azure SDK can use for
    ``services`` (``queue``, ``table``), or None: its form only (``Name=value`` pairs,
    credentials, endpoints for every service).

    The SDK's own parser raises a bare ValueError; checking here turns that into a
    setting error before anything runs. The reason never quotes the value: it may hold
    an account key.
    """
    text = value.strip()
    segments = [segment.split("=", 1) for segment in text.rstrip(";").split(";")]
    if any(len(pair) != 2 or not all(pair) for pair in segments):
        return "it is not a list of Name=value pairs separated by ';'"
    pairs: dict[str, str] = {}
    for key, val in segments:
        if key.lower() in pairs:
            return f"it names {key} twice"
        pairs[key.lower()] = val
    if "usedevelopmentstorage" in pairs:
        # The table SDK recognises only this exact text (no other pairs, no ';').
        if text.lower() != "usedevelopmentstorage=true" or pairs["usedevelopmentstorage"] != "true":
            return "UseDevelopmentStorage=true must be the whole value"
        return None
    # A key that is wrong (even not base64) is the account's answer to give: the SDK
    # reports it as an authentication failure, which names the setting and its alert.
    if "accountkey" in pairs:
        if "accountname" not in pairs:
            return "it has an AccountKey but no AccountName"
    elif "sharedaccesssignature" not in pairs:
        return "it has neither AccountName and AccountKey nor a SharedAccessSignature"
    protocol = pairs.get("defaultendpointsprotocol")
    if protocol is not None and protocol.lower() not in ("http", "https"):
        return "its DefaultEndpointsProtocol is neither https nor http"
    for service in services:
        endpoint = pairs.get(f"{service}endpoint")
        if endpoint is None and "accountname" not in pairs:
            return f"it names neither an AccountName nor a {service.capitalize()}Endpoint"
        if endpoint is not None and not endpoint.lower().startswith(("https://", "http://")):
            return f"its {service.capitalize()}Endpoint is not an http(s) URL"
    return None


@dataclass(frozen=True)
class StorageAccount:
    """Where the app's queue and table live, from the ``AzureWebJobsStorage`` settings."""

    connection_string: str | None = None
    queue_url: str | None = None
    table_url: str | None = None
    credential_kind: str | None = None
    client_id: str | None = None

    def __repr__(self) -> str:  # the connection string may hold an account key
        where = self.table_url or ("connection string" if self.connection_string else "?")
        return f"StorageAccount({where})"

    @staticmethod
    def configured(environ: Mapping[str, str]) -> bool:
        """Whether ``AzureWebJobsStorage`` is set, in either form."""
        prefix = f"{SETTING}__"
        return any(environ.get(name, "").strip() for name in (
            SETTING, prefix + "accountName", prefix + "tableServiceUri"))

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> StorageAccount:
        """Read the settings; ConfigError naming ``AzureWebJobsStorage`` when absent or
        not a usable connection string."""
        conn = environ.get(SETTING, "").strip()
        if conn:
            problem = connection_string_problem(conn, ("queue", "table"))
            if problem:
                raise ConfigError(f"{SETTING}: not a storage connection string: {problem}. "
                                  f"Example: {CONNECTION_EXAMPLE}.", setting=SETTING)
            return cls(connection_string=conn)
        prefix = f"{SETTING}__"
        account = environ.get(prefix + "accountName", "").strip()
        queue_url = environ.get(prefix + "queueServiceUri", "").strip()
        table_url = environ.get(prefix + "tableServiceUri", "").strip()
        if account:
            queue_url = queue_url or f"https://{account}.queue.core.windows.net"
            table_url = table_url or f"https://{account}.table.core.windows.net"
        if queue_url and table_url:
            return cls(
                queue_url=queue_url,
                table_url=table_url,
                credential_kind=environ.get(prefix + "credential", "").strip().lower() or None,
                client_id=environ.get(prefix + "clientId", "").strip() or None,
            )
        raise ConfigError(
            f"{SETTING}: not set. The job queue and job records live in the app's storage "
            f"account. Example: UseDevelopmentStorage=true (Azurite), or {prefix}accountName="
            "stinfrabackup01 with a managed identity.",
            setting=SETTING,
        )

    def _credential(self) -> TokenCredential:
        from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

        if self.credential_kind == "managedidentity":
            return ManagedIdentityCredential(client_id=self.client_id)
        return DefaultAzureCredential(managed_identity_client_id=self.client_id)

    def table_client(self, name: str = TABLE_NAME) -> TableClient:
        """A client of table ``name``, created on first use in this process."""
        from azure.data.tables import TableServiceClient

        if self.connection_string:
            with _refused_connection_string():
                service = TableServiceClient.from_connection_string(self.connection_string)
        else:
            assert self.table_url
            service = TableServiceClient(self.table_url, credential=self._credential())
        key = (service.url, name)
        if key not in _created:
            with _created_lock, translate_storage_errors(f"creating table {name}"):
                service.create_table_if_not_exists(name)
                _created.add(key)
        client: TableClient = service.get_table_client(name)
        return client

    def queue_client(self, name: str = QUEUE_NAME) -> QueueClient:
        """A client of queue ``name`` (base64 messages, as the Functions trigger expects),
        created on first use in this process."""
        from azure.core.exceptions import ResourceExistsError
        from azure.storage.queue import (
            QueueClient,
            TextBase64DecodePolicy,
            TextBase64EncodePolicy,
        )

        encode, decode = TextBase64EncodePolicy(), TextBase64DecodePolicy()
        if self.connection_string:
            with _refused_connection_string():
                client = QueueClient.from_connection_string(
                    self.connection_string, name, message_encode_policy=encode,
                    message_decode_policy=decode)
        else:
            assert self.queue_url
            client = QueueClient(self.queue_url, name, credential=self._credential(),
                                 message_encode_policy=encode, message_decode_policy=decode)
        key = (client.url, name)
        if key not in _created:
            with (_created_lock, translate_storage_errors(f"creating queue {name}"),
                  contextlib.suppress(ResourceExistsError)):
                client.create_queue()
            _created.add(key)
        return client


@contextlib.contextmanager
def _refused_connection_string() -> Iterator[None]:
    """The SDK's ValueError for a connection string it cannot parse, as the setting error
    (:func:`connection_string_problem` catches the known forms first; this is the rest)."""
    try:
        yield
    except ValueError:
        raise ConfigError(f"{SETTING}: the Azure SDK refused the connection string. Example: "
                          f"{CONNECTION_EXAMPLE}.", setting=SETTING) from None
