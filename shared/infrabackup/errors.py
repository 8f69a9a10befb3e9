"""One error hierarchy for the whole service.

Every failure the service reports is an :class:`InfraBackupError`. Lower-level
exceptions (OSError, smbprotocol, Key Vault, Azure Storage) are translated into it
at the boundary where they occur, so the rest of the code, the command line and the
Functions only ever deal with this tree (the command's exit codes for it are in
:mod:`infrabackup.cli.render`: 2 for ConfigError, 3 for RefusedError, else 1)::

    InfraBackupError                  .alert, .retryable, .code
    ├── ConfigError                   a bad setting, argument or request field
    ├── RefusedError                  maintenance window, lock held, version gap
    │   ├── LockHeldError             another backup of the stamp is running
    │   └── SourceBusyError           a restore into that source is running
    ├── ShareError                    the share failed; .alert says which of the five
    │   ├── CapacityError             out of capacity (disk full, quota)
    │   ├── ConnectivityError         refused, reset, closed, timed out, hung (retryable)
    │   ├── PathError                 name does not resolve, share/folder missing
    │   └── AuthenticationError       bad user or password, access denied
    ├── KeyMaterialError              certificate / key problems (wrong PFX, missing key)
    ├── IntegrityError                a backup failed authentication (tampered, truncated)
    ├── NotFoundError                 no backup with that id
    ├── RestoreTargetError            the local folder a restore writes into failed (no alert)
    └── GeneralFault                  anything else

Each error knows its alert (one of :mod:`infrabackup.alerts`) and whether a retry can help;
``remediation`` is the alert's unless the error knows better (a restore target's problem
is not the share's, so it names the folder instead).
Messages never contain secrets: callers build them from names and paths only.
"""

from __future__ import annotations

from infrabackup.alerts import Alert


class InfraBackupError(Exception):
    """Base of every error the service reports.

    ``code`` is a short stable identifier (used in JSON output and the job record),
    ``status`` the underlying fault code when there is one (an NTSTATUS such as
    ``0xC000007F``, an errno name, an HTTP status), ``alert`` the seed alert a backup
    failing with this error raises, and ``retryable`` whether trying again unchanged
    can help.
    """

    code = "GeneralFault"
    alert = Alert.GENERAL
    #: Whether ``alert`` describes this failure (False: none of the five applies, and
    #: operators are shown only ``remediation``).
    alert_applies = True
    retryable = False

    def __init__(self, message: str, *, status: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status

    @property
    def remediation(self) -> str:
        """What to do about it: the alert's remediation unless a subclass knows better."""
        return self.alert.remediation

    def to_dict(self) -> dict[str, object]:
        """The error as JSON-ready data (no secrets: the message never holds any)."""
        data: dict[str, object] = {
            "code": self.code,
            "message": self.message,
            "alert": self.alert.title if self.alert_applies else None,
            "remediation": self.remediation,
            "retryable": self.retryable,
        }
        if self.status:
            data["status"] = self.status
        return data


class ConfigError(InfraBackupError):
    """A setting, argument or request field is wrong. Nothing has been written."""

    code = "ConfigurationError"

    def __init__(self, message: str, *, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting


class RefusedError(InfraBackupError):
    """The operation is refused by a rule (maintenance window, version gap, lock)."""

    code = "Refused"


class LockHeldError(RefusedError):
    """Another backup of the same stamp holds the share lock.

    ``holder`` is what the holder wrote into the lock file (its holder text), when it
    could be read: it names the holding run (:func:`infrabackup.jobs.job_recovery.holder`).
    """

    code = "BackupAlreadyRunning"

    def __init__(self, message: str, *, holder: str | None = None) -> None:
        super().__init__(message)
        self.holder = holder


class SourceBusyError(RefusedError):
    """A restore into the source is running (its lock is held): nothing was touched."""

    code = "SourceBusy"


class ShareError(InfraBackupError):
    """The share failed. Subclasses pick the alert."""

    code = "ShareError"


class CapacityError(ShareError):
    code = "ShareOutOfCapacity"
    alert = Alert.CAPACITY


class ConnectivityError(ShareError):
    code = "ShareConnectivity"
    alert = Alert.CONNECTIVITY
    retryable = True


class PathError(ShareError):
    code = "SharePathFault"
    alert = Alert.PATH


class AuthenticationError(ShareError):
    code = "ShareAuthentication"
    alert = Alert.AUTHENTICATION


class KeyMaterialError(InfraBackupError):
    """The certificate, private key or legacy key is missing, unusable or wrong."""

    code = "EncryptionKeyError"


class IntegrityError(InfraBackupError):
    """Data read back from the share failed authentication or its digest."""

    code = "IntegrityError"

    def __init__(self, message: str, *, component: str | None = None) -> None:
        super().__init__(message)
        self.component = component


class NotFoundError(InfraBackupError):
    """No backup (or component) with the given id or name."""

    code = "NotFound"


class RestoreTargetError(InfraBackupError):
    """The local folder a restore writes into cannot take it (not a folder, no permission,
    full). It is that folder's problem, not the backup share's: no share alert applies, and
    the remediation names the folder."""

    code = "RestoreTargetError"
    alert_applies = False

    def __init__(self, message: str, *, remediation: str, status: str | None = None) -> None:
        super().__init__(message, status=status)
        self._remediation = remediation

    @property
    def remediation(self) -> str:
        return self._remediation


class GeneralFault(InfraBackupError):
    """Anything that fits no other alert; may be intermittent, so worth one retry."""

    code = "GeneralFault"
    retryable = True
