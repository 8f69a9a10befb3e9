"""An SMB 2/3 file share as the backup target (docs/SMB.md).

The package, by job:

* :mod:`.share` — :class:`SmbShare`, the verbs of the Share interface;
* :mod:`.session` — connections, the deadline on every request, retries;
* :mod:`.pipe` — the fast data path: pipelined READ/WRITE requests within the credits;
* :mod:`.wire` — its framing: headers, signatures, the SMB 3 transform;
* :mod:`.status` — NTSTATUS and socket failures → :mod:`infrabackup.errors` (one map);
* :mod:`._compat` — every use of smbprotocol's private internals (the version is pinned).

Importing names from ``infrabackup.share.smb`` keeps working as before the split.
"""

from __future__ import annotations

from infrabackup.share.smb.pipe import PIPELINE_DEPTH, WRITE_SIZE
from infrabackup.share.smb.session import ABORT_GRACE_SECONDS, BACKOFF_SECONDS, RETRIES
from infrabackup.share.smb.share import LOCK_INFO_MAX, READ_CHUNK, SmbShare
from infrabackup.share.smb.status import (
    STATUS_ACCESS_DENIED,
    STATUS_BAD_NETWORK_NAME,
    STATUS_DISK_FULL,
    STATUS_LOGON_FAILURE,
    STATUS_NOT_FOUND,
    STATUS_OBJECT_NAME_COLLISION,
    STATUS_OBJECT_NAME_NOT_FOUND,
    STATUS_OBJECT_PATH_NOT_FOUND,
    STATUS_SHARING_VIOLATION,
    TIMED_OUT,
    SmbTarget,
    WireStatusError,
    status_hex,
    translate_smb_error,
)

__all__ = [
    "ABORT_GRACE_SECONDS",
    "BACKOFF_SECONDS",
    "LOCK_INFO_MAX",
    "PIPELINE_DEPTH",
    "READ_CHUNK",
    "RETRIES",
    "STATUS_ACCESS_DENIED",
    "STATUS_BAD_NETWORK_NAME",
    "STATUS_DISK_FULL",
    "STATUS_LOGON_FAILURE",
    "STATUS_NOT_FOUND",
    "STATUS_OBJECT_NAME_COLLISION",
    "STATUS_OBJECT_NAME_NOT_FOUND",
    "STATUS_OBJECT_PATH_NOT_FOUND",
    "STATUS_SHARING_VIOLATION",
    "TIMED_OUT",
    "WRITE_SIZE",
    "SmbShare",
    "SmbTarget",
    "WireStatusError",
    "status_hex",
    "translate_smb_error",
]
