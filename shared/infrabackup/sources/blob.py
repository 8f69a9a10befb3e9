"""An Azure Blob container (optionally a prefix in it) as a backup source (``type: blob``).

Where the credentials come from (docs/SOURCES.md): the source's ``connection`` names a
setting, never holds a value. That setting holds either

* a storage **connection string** (account key or SAS; ``UseDevelopmentStorage=true``
  for Azurite), or
* an **account URL** ``https://<account>.blob.core.windows.net``: the client then
  authenticates with ``DefaultAzureCredential`` (the Function app's managed identity),

or, in the Azure Functions identity-based form, ``<connection>__blobServiceUri`` (or
``<connection>__serviceUri``) holds the account URL, with ``<connection>__clientId``
naming a user-assigned identity. Roles: *Storage Blob Data Reader* to back up,
*Storage Blob Data Contributor* to restore into the container.

Blob names are ``/``-separated paths below the prefix (the prefix is a virtual folder:
a missing trailing ``/`` is added). Virtual folders become folders in the component;
names that cannot be a path (empty parts, ``.``, ``..``, a backslash) and a blob that
has the same name as a virtual folder are skipped and listed as skipped. Only the
bytes are backed up: content type, metadata, tags and access tier are not.

Live reading: a blob is opened by reading its properties (size, ETag, last-modified);
every range is then downloaded on condition that the ETag is unchanged
(``If-Match``), at most :data:`RANGE_SIZE` bytes at a time. If the blob changes while
it is read, the range fails with 412; the reader continues on the new version and the
blob is recorded as changed-during-backup, as is a blob whose ETag changed by the time
its end is read. A blob that is gone when it is opened is recorded as vanished.
"""

from __future__ import annotations

import contextlib
import functools
import io
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final, TypeVar

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.storage.blob import BlobClient, BlobProperties, BlobServiceClient, ContainerClient

from infrabackup.settings import Settings, SourceSpec
from infrabackup.share.base import lock_info
from infrabackup.sources.base import (
    LOCK_FILE,
    Held,
    SourceEntry,
    SourceError,
    busy_error,
    is_reserved,
    selected,
    walk,
)

T = TypeVar("T")

#: Bytes per ranged download: bounded memory whatever the blob's size.
RANGE_SIZE: Final = 4 * 1024 * 1024
#: Retries of a failed request by the SDK's own policy (exponential backoff).
RETRIES: Final = 3
#: A blob source's restore lock is a lease this long, renewed every third of it.
LEASE_SECONDS: Final = 15
#: How long a run waits for the lease of a restore that may have died to run out.
LEASE_WAIT_SECONDS: Final = LEASE_SECONDS + 5.0
#: How long a server-side copy (restore) may take before it is a failure.
COPY_TIMEOUT_SECONDS: Final = 600.0
FILE_MODE = stat.S_IFREG | 0o644
DIR_MODE = stat.S_IFDIR | 0o755


def _bad_part(part: str) -> bool:
    return part in ("", ".", "..") or any(c in part for c in "\\\0")


class BlobSource:
    """The blobs of ``spec.container`` under ``spec.prefix`` (see the module docstring)."""

    def __init__(self, spec: SourceSpec, settings: Settings) -> None:
        assert spec.container is not None and spec.connection is not None
        self.spec = spec
        prefix = (spec.prefix or "").lstrip("/")
        self.prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        self.service = _service_client(spec, settings)
        self.container: ContainerClient = self.service.get_container_client(spec.container)
        self.description = (
            f"container {spec.container}"
            + (f", prefix {self.prefix}" if self.prefix else "")
            + f" at {self.service.primary_hostname}"
        )

    # ---- reading (the Source protocol) --------------------------------------------------

    def entries(self) -> Iterator[SourceEntry]:
        """Virtual folders and blobs under the prefix, sorted by name per folder."""
        self.guard("reading", self.container.get_container_properties)
        now = time.time()
        yield from walk(lambda rel_dir: self._folder(rel_dir, now))

    def _folder(self, rel_dir: str, now: float) -> Iterator[SourceEntry]:
        start = self.prefix + rel_dir
        items = self.guard(
            f"listing {start or '/'}",
            lambda: list(self.container.walk_blobs(name_starts_with=start, delimiter="/")),
        )
        folders = {item.name[len(start):-1] for item in items
                   if not isinstance(item, BlobProperties)}
        for item in sorted(items, key=lambda i: str(i.name)):
            is_blob = isinstance(item, BlobProperties)
            part = item.name[len(start):] if is_blob else item.name[len(start):-1]
            rel = rel_dir + part
            if not rel_dir and is_reserved(part):
                continue
            if _bad_part(part) or (is_blob and part in folders):
                # Not a path a folder could hold (or a blob shadowing a virtual folder).
                yield SourceEntry(rel or item.name, "special", FILE_MODE, now)
            elif not is_blob:
                if selected(self.spec, rel, True):
                    yield SourceEntry(rel, "dir", DIR_MODE, now)
            elif isinstance(item, BlobProperties) and selected(self.spec, rel, False):
                yield SourceEntry(rel, "file", FILE_MODE, item.last_modified.timestamp(),
                                  int(item.size))

    def open(self, entry: SourceEntry) -> _BlobReader:
        """Open a blob for live reading; FileNotFoundError when it is gone."""
        blob = self.container.get_blob_client(self.prefix + entry.path)
        try:
            props = self.guard(f"opening {entry.path}", blob.get_blob_properties)
        except SourceError as exc:
            if exc.status == "404":
                raise FileNotFoundError(2, "vanished", entry.path) from None
            raise
        return _BlobReader(self, blob, props, entry.path)

    # ---- errors ------------------------------------------------------------------------

    def guard(self, what: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` (SDK calls), translating Azure errors into SourceError."""
        try:
            return fn()
        except AzureError as exc:
            raise self.error(what, exc) from None

    def error(self, what: str, exc: AzureError) -> SourceError:
        """An Azure SDK error as a SourceError: status and error code, never the URL's
        query (a SAS) or the connection string."""
        name, where, setting = self.spec.name, self.description, self.spec.connection
        status = getattr(exc, "status_code", None)
        code = getattr(exc, "error_code", None)
        detail = " ".join(str(p) for p in (status, code) if p)
        shown = f" ({detail})" if detail else ""
        if isinstance(exc, ClientAuthenticationError) or status == 403:
            text = (f"{what}: access to {where} was refused{shown}. Check the setting "
                    f"{setting} (account key or SAS), or the managed identity's role (Storage "
                    "Blob Data Reader to back up, Contributor to restore).")
        elif isinstance(exc, ResourceNotFoundError) and code == "ContainerNotFound":
            text = (f"{what}: {where}: the container does not exist{shown}. Check the "
                    "source's container in BACKUP_SOURCES.")
        elif isinstance(exc, ServiceRequestError | ServiceResponseError):
            text = (f"{what}: cannot reach {self.service.primary_hostname} "
                    f"({type(exc).__name__}). Check the account in setting {setting} and the "
                    "network.")
        elif isinstance(exc, HttpResponseError):
            text = f"{what}: {where} answered{shown}."
        else:
            text = f"{what}: {where} failed ({type(exc).__name__})."
        return SourceError(f"source {name}: {text}", status=str(status) if status else None)

    def close(self) -> None:
        self.service.close()

    # ---- writing, for a restore into the source ------------------------------------------

    def names(self, rel_prefix: str = "") -> list[str]:
        """Every blob name below ``prefix + rel_prefix``, relative to the prefix."""
        start = self.prefix + rel_prefix
        found = self.guard(f"listing {start or '/'}",
                           lambda: list(self.container.list_blob_names(name_starts_with=start)))
        return [str(n)[len(self.prefix):] for n in found]

    def upload(self, local: Path, rel: str) -> None:
        """Upload the local file ``local`` as ``prefix + rel`` (streamed, overwriting)."""
        with open(local, "rb") as data:
            self.guard(f"uploading {rel}", lambda: self.container.upload_blob(
                self.prefix + rel, data, length=local.stat().st_size, overwrite=True,
                max_concurrency=2))

    def copy(self, src_rel: str, dst_rel: str) -> None:
        """Server-side copy of ``prefix + src_rel`` over ``prefix + dst_rel``; waits for it."""
        source = self.container.get_blob_client(self.prefix + src_rel)
        target = self.container.get_blob_client(self.prefix + dst_rel)
        what = f"copying {src_rel} to {dst_rel}"
        self.guard(what, lambda: target.start_copy_from_url(source.url))
        deadline = time.monotonic() + COPY_TIMEOUT_SECONDS
        while True:
            state = self.guard(what, target.get_blob_properties).copy
            if state.status in (None, "success"):
                return
            if state.status != "pending" or time.monotonic() > deadline:
                raise SourceError(
                    f"source {self.spec.name}: {what}: the copy ended as {state.status} "
                    f"({state.status_description or 'no reason given'}).",
                    status=str(state.status),
                )
            time.sleep(0.2)

    def delete(self, rel: str) -> None:
        """Delete ``prefix + rel``; nothing to do when it is already gone."""
        try:
            self.guard(f"deleting {rel}", lambda: self.container.delete_blob(self.prefix + rel))
        except SourceError as exc:
            if exc.status != "404":
                raise


def _service_client(spec: SourceSpec, settings: Settings) -> BlobServiceClient:
    """A client from the setting ``spec.connection`` names (see the module docstring)."""
    setting = spec.connection or ""
    creds = spec.credentials
    options: dict[str, Any] = {
        "retry_total": RETRIES,
        "connection_timeout": settings.share_timeout_seconds,
        "read_timeout": settings.share_timeout_seconds,
    }
    value = creds.connection.reveal() if creds.connection else ""
    url = value if value.lower().startswith(("https://", "http://")) else ""
    if not value:
        url = creds.service_url or ""
    if url:
        from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential(managed_identity_client_id=creds.client_id)
        return BlobServiceClient(url, credential=credential, **options)
    if not value:
        raise SourceError(
            f"source {spec.name}: the setting {setting} (its connection) is not set. Set it to "
            f"a storage connection string, or {setting}__blobServiceUri to the account URL."
        )
    try:
        return BlobServiceClient.from_connection_string(value, **options)
    except (ValueError, AzureError):
        # The value is a secret: say which setting is wrong, never what it holds.
        raise SourceError(
            f"source {spec.name}: the setting {setting} is not a storage connection string "
            "(AccountName=...;AccountKey=...;EndpointSuffix=... or a SAS form) nor an "
            "account URL (https://<account>.blob.core.windows.net)."
        ) from None


class _BlobReader(io.RawIOBase):
    """One blob, read in ranges pinned to the ETag it had when opened."""

    def __init__(self, source: BlobSource, blob: BlobClient, props: BlobProperties,
                 path: str) -> None:
        self._source = source
        self._blob = blob
        self._path = path
        self._etag = props.etag
        self._version_size = int(props.size)
        self._offset = 0
        self.size = int(props.size)
        self.mtime = props.last_modified.timestamp()
        self.changed = False
        self._changed_mtime = self.mtime

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer)
        while True:
            if self._offset >= self._version_size:
                self._check_end()
                return 0
            length = min(len(view), RANGE_SIZE, self._version_size - self._offset)
            try:
                data = self._source.guard(f"reading {self._path}",
                                          functools.partial(self._download, length))
            except _Modified:
                self._switch_version()
                continue
            view[: len(data)] = data
            self._offset += len(data)
            return len(data)

    def _download(self, length: int) -> bytes:
        try:
            return bytes(self._blob.download_blob(
                offset=self._offset, length=length, etag=self._etag,
                match_condition=MatchConditions.IfNotModified, max_concurrency=1,
            ).readall())
        except ResourceModifiedError:
            raise _Modified() from None

    def _switch_version(self) -> None:
        """The blob changed under us: go on with the new version, and say it changed."""
        try:
            props = self._source.guard(f"reading {self._path}", self._blob.get_blob_properties)
        except SourceError as exc:
            if exc.status != "404":
                raise
            self._version_size = 0  # deleted while read: the archive pads what is missing
            self._mark_changed(time.time())
            return
        self._etag = props.etag
        self._version_size = int(props.size)
        self._mark_changed(props.last_modified.timestamp())

    def _check_end(self) -> None:
        """At the end: is the blob still the version that was read?"""
        if self.changed:
            return
        try:
            props = self._source.guard(f"reading {self._path}", self._blob.get_blob_properties)
        except SourceError as exc:
            if exc.status != "404":
                raise
            self._mark_changed(time.time())
            return
        if props.etag != self._etag:
            self._mark_changed(props.last_modified.timestamp())

    def _mark_changed(self, new_mtime: float) -> None:
        self.changed = True
        # Last-Modified has one-second resolution; the ETag is what says it changed.
        self._changed_mtime = new_mtime if new_mtime != self.mtime else self.mtime + 0.001

    def describe(self) -> tuple[int, int, float]:
        """(size, mode, mtime) as opened; the mtime differs once a change was seen."""
        return self.size, FILE_MODE, self._changed_mtime if self.changed else self.mtime


class _Modified(Exception):
    """A range download found a different ETag (HTTP 412)."""


# ---- the restore writer -------------------------------------------------------------------


class BlobSite:
    """A blob source's journal, lock and listings, on top of :class:`BlobSource`."""

    lock_wait = LEASE_WAIT_SECONDS

    def __init__(self, source: BlobSource) -> None:
        self.source = source
        self.spec = source.spec
        self.description = source.description

    def _client(self, rel: str) -> Any:
        return self.source.container.get_blob_client(self.source.prefix + rel)

    def top_reserved(self) -> list[str]:
        """Reserved top-level names under the prefix (virtual folders and blobs)."""
        start = self.source.prefix + ".infrabackup-"
        container = self.source.container
        items = self.source.guard(
            "listing", lambda: list(container.walk_blobs(name_starts_with=start, delimiter="/")))
        names = {str(i.name)[len(self.source.prefix):].rstrip("/") for i in items}
        return sorted(n for n in names if is_reserved(n))

    def exists(self, rel: str) -> bool:
        return bool(self.source.guard(f"reading {rel}", self._client(rel).exists))

    def read(self, rel: str) -> bytes | None:
        try:
            return bytes(self.source.guard(
                f"reading {rel}", lambda: self._client(rel).download_blob().readall()))
        except SourceError as exc:
            if exc.status == "404":
                return None
            raise

    def write(self, rel: str, data: bytes) -> None:
        """One Put Blob: readers see the old or the new bytes."""
        self.source.guard(f"writing {rel}",
                          lambda: self._client(rel).upload_blob(data, overwrite=True))

    def close(self) -> None:
        self.source.close()

    def delete_under(self, rel_prefix: str) -> None:
        for blob in self.source.names(rel_prefix):
            self.source.delete(blob)

    @contextlib.contextmanager
    def lock(self, holder: str, wait: float = 0.0) -> Iterator[Held]:
        """A lease on ``<prefix>.infrabackup-journal/lock``, renewed by a thread; waits up
        to ``wait`` seconds for a lease that may belong to a dead restore to run out."""
        blob = self._client(LOCK_FILE)
        info = lock_info(holder)
        deadline = time.monotonic() + wait
        while True:
            try:
                blob.upload_blob(info, overwrite=False)
            except ResourceExistsError:
                pass  # made by an earlier holder (leased or not)
            except AzureError as exc:
                raise self.source.error("taking the restore lock", exc) from None
            try:
                lease = blob.acquire_lease(lease_duration=LEASE_SECONDS)
                break
            except ResourceNotFoundError:
                continue  # released and deleted by its holder just now: create it again
            except AzureError as exc:
                if getattr(exc, "error_code", None) != "LeaseAlreadyPresent":
                    raise self.source.error("taking the restore lock", exc) from None
            if time.monotonic() >= deadline:
                raw = self.read(LOCK_FILE) or b""
                raise busy_error(self.spec.name, self.description, raw,
                            f" (If that process died, its lease ends within {LEASE_SECONDS} "
                            "s: try again then.)")
            time.sleep(1.0)
        held = _Lease(self, lease)
        try:
            with contextlib.suppress(AzureError):
                blob.upload_blob(info, overwrite=True, lease=lease)
            yield held
        finally:
            held.release(blob)


class _Lease:
    """A held lease, renewed every third of its duration until released."""

    def __init__(self, site: BlobSite, lease: Any) -> None:
        self._site = site
        self._lease = lease
        self._stop = threading.Event()
        self.lost: str | None = None
        self._thread = threading.Thread(target=self._renew, name="restore-lease", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(LEASE_SECONDS / 3):
            try:
                self._lease.renew()
            except AzureError as exc:
                self.lost = type(exc).__name__
                return

    def check(self) -> None:
        if self.lost:
            raise SourceError(
                f"source {self._site.spec.name}: the lease on {self._site.description}'s "
                f"restore lock could not be renewed ({self.lost}); another run may take it, "
                "so this restore stopped. The next restore, backup or check finishes or "
                "undoes what it left.")

    def release(self, blob: Any) -> None:
        self._stop.set()
        self._thread.join()
        with contextlib.suppress(AzureError):
            self._lease.release()
            # Without the lease: refused (412) if another run leased it meanwhile.
            blob.delete_blob()
