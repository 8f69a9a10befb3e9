"""Settings: read from the environment or a local.settings.json, validated before use.

Every setting of the brief is read here and nowhere else. :func:`load_settings` returns
a frozen :class:`Settings`; a bad value raises :class:`~infrabackup.errors.ConfigError` whose
message names the setting, says what is wrong and gives an example of a good value.
All problems are collected first, so an operator sees every bad setting at once.

Secrets (the share password, the legacy key, the PFX password) are held in
:class:`Secret`, whose ``repr`` and ``str`` never show the value.
"""

from __future__ import annotations

import datetime as dt
import errno
import ipaddress
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from infrabackup.errors import ConfigError
from infrabackup.inputs import (
    JsonInputError,
    ascii_decimal,
    ascii_int,
    load_json,
    path_problem,
    quote,
)
from infrabackup.ncrontab import parse_schedule

#: Component and OEM folder names: safe on Windows and POSIX shares alike. Matched whole
#: (``fullmatch``: ``$`` would let a final newline through) and ASCII only.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", re.ASCII)
# No IGNORECASE: with it, 'ſ' matches 's' and 'K' (Kelvin) matches 'k'. DNS names here
# are ASCII (an internationalised name is given in its xn-- form).
_DNS_LABEL_RE = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)", re.ASCII)
#: An app setting a source names (its connection or credentials): what App Service allows.
SETTING_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,127}", re.ASCII)
_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL"} | {f"COM{i}" for i in range(1, 10)} | {
    f"LPT{i}" for i in range(1, 10)
}

SOURCE_TYPES = ("directory", "smb", "blob")
SOURCE_SCOPES = ("backup", "region")
COMPRESSIONS = ("none", "zstd")
DEFAULT_SCHEDULE = "0 0 */12 * * *"
#: The stamp of the app's own (single-stamp) settings; infrabackup.stamps adds the others.
DEFAULT_STAMP = "default"
#: Scheduled verification: daily at 03:30 UTC, between the default backups (00:00, 12:00).
DEFAULT_VERIFY_SCHEDULE = "0 30 3 * * *"
#: What the service keeps beside MASBackup in the region folder, where region-scoped
#: sources are stored too (infrabackup.layout.MASBACKUP, LOCK_FILE, infrabackup.jobs.maintenance's
#: file): a source named so would mix its data with them. Compared ignoring case, as
#: shares are case-insensitive; every name starting "infrabackup" is the service's.
RESERVED_REGION_NAMES = frozenset({"masbackup"})
RESERVED_REGION_PREFIX = "infrabackup"
#: BACKUP_SOURCES (inline or @file) and local.settings.json: far larger than any real one.
MAX_SOURCES_BYTES = 1024 * 1024
MAX_SETTINGS_FILE_BYTES = 4 * 1024 * 1024


if TYPE_CHECKING:
    from infrabackup.jobs.storage import StorageAccount


class Secret:
    """A secret value that never prints itself."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The value, for the one call that needs it (a login, a key derivation)."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)


@dataclass(frozen=True)
class UncPath:
    """A parsed ``\\\\host\\share[\\folder...]`` path."""

    host: str
    share: str
    folders: tuple[str, ...]

    def __str__(self) -> str:
        return "\\\\" + "\\".join((self.host, self.share, *self.folders))


@dataclass(frozen=True)
class SourceSpec:
    """One entry of ``BACKUP_SOURCES``: what to back up and where it goes."""

    name: str
    type: str
    scope: str = "backup"
    path: str | None = None
    container: str | None = None
    prefix: str | None = None
    connection: str | None = None
    username_setting: str | None = None
    password_setting: str | None = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    port: int | None = None  # smb sources: the server's SMB port (default 445)
    #: The values of the settings this source names, resolved by :func:`load_settings`.
    credentials: SourceCredentials = field(
        default_factory=lambda: SourceCredentials(), repr=False, compare=False)


@dataclass(frozen=True)
class SourceCredentials:
    """What a source's named settings hold (SMB: ``usernameSetting``/``passwordSetting``;
    blob: ``connection`` and its ``__blobServiceUri``/``__serviceUri``/``__clientId``
    forms), read from the environment once, so no source reads the environment."""

    username: str | None = None
    password: Secret | None = None
    #: The value of the ``connection`` setting: a connection string or an account URL.
    connection: Secret | None = None
    #: ``<connection>__blobServiceUri`` (or ``__serviceUri``): identity-based access.
    service_url: str | None = None
    client_id: str | None = None


def _credentials(spec: SourceSpec, env: Mapping[str, str]) -> SourceSpec:
    """``spec`` with the values of the settings it names (checked by
    :func:`_check_source_settings`; an unusable connection string is the source's error)."""
    def value(name: str | None) -> str:
        return env.get(name or "", "")

    setting = spec.connection or ""
    service_url = (value(f"{setting}__blobServiceUri") or value(f"{setting}__serviceUri")
                   ).strip() if setting else ""
    return replace(spec, credentials=SourceCredentials(
        username=value(spec.username_setting).strip() or None,
        password=_secret(value(spec.password_setting)),
        connection=_secret(value(spec.connection).strip()) if setting else None,
        service_url=service_url or None,
        client_id=(value(f"{setting}__clientId").strip() or None) if setting else None,
    ))


@dataclass(frozen=True)
class Settings:
    """The validated settings of one run. ``share_path`` is a UNC path or a local folder."""

    share_path: UncPath | Path | None
    share_port: int = 445
    share_require_encryption: bool = False
    share_timeout_seconds: float = 60.0
    share_username: str | None = None
    share_password: Secret | None = None
    external_domain: str | None = None
    region: str | None = None
    scale_unit: str | None = None
    encryption_cert: str | None = None
    encryption_key: Secret | None = None
    decryption_cert: str | None = None
    decryption_cert_password: Secret | None = None
    sources: tuple[SourceSpec, ...] = ()
    schedule: str = DEFAULT_SCHEDULE
    scheduler_enabled: bool = True
    retention_days: int = 7
    compression: str = "none"
    parallel_components: int = 2
    stamp_version: str | None = None
    stale_after_hours: int | None = None  # None: derived from the schedule (infrabackup.staleness)
    verify_schedule: str = DEFAULT_VERIFY_SCHEDULE
    #: The restore drill's PFX (a file or a Key Vault secret URL; opt-in), and the client id
    #: of the identity it reads Key Vault with (docs/KEYVAULT.md: not the backup identity).
    drill_cert: str | None = None
    drill_client_id: str | None = None
    appinsights_connection_string: Secret | None = None
    webjobs_storage: Secret | None = None
    stamp_id: str = DEFAULT_STAMP  # which stamp of the fleet (infrabackup.stamps)
    #: The app's storage account (``AzureWebJobsStorage`` in either form); None when not
    #: set. Use :meth:`storage_account`, which raises a deferred setting error.
    storage: StorageAccount | None = field(default=None, repr=False, compare=False)
    storage_error: ConfigError | None = field(default=None, repr=False, compare=False)
    #: The documented settings (:data:`ALL_SETTINGS`) as given, for :meth:`require`,
    #: :meth:`is_set` and :meth:`masked` only; nothing downstream reads the environment.
    given: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    def is_set(self, name: str) -> bool:
        """Whether the documented setting ``name`` was given a (non-blank) value."""
        return bool(self.given.get(name, "").strip())

    def storage_account(self) -> StorageAccount | None:
        """The app's storage account, None when ``AzureWebJobsStorage`` is not set;
        ConfigError naming it when it is set but incomplete."""
        if self.storage_error is not None:
            raise ConfigError(self.storage_error.message, setting=self.storage_error.setting)
        return self.storage

    def require(self, *names: str) -> None:
        """Raise ConfigError naming every setting in ``names`` that is not set."""
        problems = [
            f"{name}: not set. {_REQUIRED_HINTS[name]}"
            for name in names
            if not self.is_set(name) and not _derived_present(self, name)
        ]
        if problems:
            raise ConfigError(_join(problems), setting=names[0])

    def masked(self) -> dict[str, object]:
        """Every setting as shown to operators: secrets replaced by ``***``."""
        out: dict[str, object] = {}
        for name in ALL_SETTINGS:
            value = self.given.get(name)
            if value is None or value == "":
                out[name] = None
            elif name in SECRET_SETTINGS:
                out[name] = "***"
            else:
                out[name] = value
        return out


def _derived_present(settings: Settings, name: str) -> bool:
    return name == "BACKUP_ENCRYPTION_CERT" and bool(settings.encryption_key)


_REQUIRED_HINTS = {
    "BACKUP_SHARE_PATH": r"Example: \\fileserver01.contoso.com\AzSBackups, or /srv/backups.",
    "BACKUP_EXTERNAL_DOMAIN": "Example: contoso.com.",
    "BACKUP_REGION": "Example: nyc.",
    "BACKUP_ENCRYPTION_CERT": "Example: /etc/infrabackup/backup.cer (made by "
    "'infrabackup keygen'), or a Key Vault certificate URL.",
    "BACKUP_DECRYPTION_CERT": "Example: /secure/backup.pfx (the PFX made by "
    "'infrabackup keygen'), or a Key Vault secret URL.",
    "BACKUP_SOURCES": 'Example: [{"name": "ACS", "type": "directory", "path": "/data/acs"}].',
    "BACKUP_STAMP_VERSION": "Example: 1.2408.1.50.",
}

SECRET_SETTINGS = frozenset(
    {
        "BACKUP_SHARE_PASSWORD",
        "BACKUP_ENCRYPTION_KEY",
        "BACKUP_DECRYPTION_CERT_PASSWORD",
        "APPLICATIONINSIGHTS_CONNECTION_STRING",
        "AzureWebJobsStorage",
    }
)

ALL_SETTINGS = (
    "BACKUP_SHARE_PATH",
    "BACKUP_SHARE_PORT",
    "BACKUP_SHARE_REQUIRE_ENCRYPTION",
    "BACKUP_SHARE_TIMEOUT_SECONDS",
    "BACKUP_SHARE_USERNAME",
    "BACKUP_SHARE_PASSWORD",
    "BACKUP_EXTERNAL_DOMAIN",
    "BACKUP_REGION",
    "BACKUP_SCALE_UNIT",
    "BACKUP_ENCRYPTION_CERT",
    "BACKUP_ENCRYPTION_KEY",
    "BACKUP_DECRYPTION_CERT",
    "BACKUP_DECRYPTION_CERT_PASSWORD",
    "BACKUP_SOURCES",
    "BACKUP_SCHEDULE",
    "BACKUP_SCHEDULER_ENABLED",
    "BACKUP_RETENTION_DAYS",
    "BACKUP_COMPRESSION",
    "BACKUP_PARALLEL_COMPONENTS",
    "BACKUP_STAMP_VERSION",
    "BACKUP_STALE_AFTER_HOURS",
    "BACKUP_VERIFY_SCHEDULE",
    "BACKUP_DRILL_CERT",
    "BACKUP_DRILL_CLIENT_ID",
    "APPLICATIONINSIGHTS_CONNECTION_STRING",
    "AzureWebJobsStorage",
)


def read_settings_file(path: str | Path) -> dict[str, str]:
    """The ``Values`` object of a local.settings.json file, as strings."""
    example = 'Example: {"IsEncrypted": false, "Values": {"BACKUP_SHARE_PATH": "/srv/backups"}}'
    problem = path_problem(str(path))
    if problem:
        raise ConfigError(f"--settings: {quote(path)} cannot be a file name: {problem}.",
                          setting="--settings")
    try:
        text = read_text_file(Path(path), MAX_SETTINGS_FILE_BYTES)
    except FileNotFoundError:
        raise ConfigError(f"--settings: file {path} does not exist.",
                          setting="--settings") from None
    except OSError as exc:
        raise ConfigError(f"--settings: cannot read {path} ({exc.strerror or exc}).",
                          setting="--settings") from None
    try:
        data = load_json(text, max_bytes=MAX_SETTINGS_FILE_BYTES)
    except JsonInputError as exc:
        raise ConfigError(f"--settings: {path} is not usable: {exc}. {example}",
                          setting="--settings") from None
    values = data.get("Values") if isinstance(data, dict) else None
    if not isinstance(values, dict):
        raise ConfigError(f"--settings: {path} has no \"Values\" object. {example}",
                          setting="--settings")
    return {str(k): "" if v is None else str(v) for k, v in values.items()}


def read_text_file(path: Path, max_bytes: int) -> str:
    """A small UTF-8 text file named by a setting; OSError (with ``strerror``) when it
    is not a regular file, larger than ``max_bytes`` or not UTF-8 — never a hang on a
    FIFO or a device, never a whole binary read into memory."""
    st = path.stat()  # follows symlinks: a link to a regular file is fine
    if not stat.S_ISREG(st.st_mode):
        raise OSError(errno.EINVAL, "not a regular file")
    with path.open("rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise OSError(errno.EFBIG, f"larger than {max_bytes} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise OSError(errno.EILSEQ, f"not UTF-8 text (byte {exc.start}); a binary file?"
                      ) from None


def load_settings(
    environ: Mapping[str, str] | None = None, settings_file: str | Path | None = None
) -> Settings:
    """Validate settings from ``environ`` (default ``os.environ``) and an optional file.

    Values in ``settings_file`` (a local.settings.json) win over the environment for
    the names they set: an explicit ``--settings`` is what the operator asked for.
    Raises ConfigError listing every bad setting; nothing has been touched by then
    (reading ``@file`` sources is all it does outside the process). Never raises
    anything else, whatever the values hold.
    """
    env = dict(os.environ if environ is None else environ)
    if settings_file is not None:
        env.update(read_settings_file(settings_file))
    given = {name: env[name] for name in ALL_SETTINGS if name in env}
    problems: list[str] = []

    def get(name: str) -> str:
        return env.get(name, "").strip()

    share_path = _parse_share_path(get("BACKUP_SHARE_PATH"), problems)
    port = _parse_int(get("BACKUP_SHARE_PORT"), "BACKUP_SHARE_PORT", 445, 1, 65535, "445", problems)
    require_enc = _parse_bool(
        get("BACKUP_SHARE_REQUIRE_ENCRYPTION"), "BACKUP_SHARE_REQUIRE_ENCRYPTION", False, problems
    )
    timeout = _parse_float(
        get("BACKUP_SHARE_TIMEOUT_SECONDS"), "BACKUP_SHARE_TIMEOUT_SECONDS", 60.0, 1, 3600, problems
    )
    # Checked before lowercasing: str.lower() maps look-alikes such as the Kelvin sign to
    # ASCII, which would put the backups in another stamp's folder without a word.
    domain = get("BACKUP_EXTERNAL_DOMAIN") or None
    if domain is not None and not _is_dns_name(domain):
        problems.append(
            f"BACKUP_EXTERNAL_DOMAIN: {quote(domain)} is not a DNS name (labels of ASCII "
            "letters, digits and hyphens, separated by dots). Example: contoso.com."
        )
    region = get("BACKUP_REGION") or None
    if region is not None and not _DNS_LABEL_RE.fullmatch(region):
        problems.append(
            f"BACKUP_REGION: {quote(region)} is not a DNS label (ASCII letters, digits and "
            "hyphens, at most 63). Example: nyc."
        )
    scale_unit = get("BACKUP_SCALE_UNIT") or None
    if scale_unit is not None and not is_safe_name(scale_unit):
        problems.append(
            f"BACKUP_SCALE_UNIT: {quote(scale_unit)} is not a safe folder name (ASCII "
            "letters, digits, '.', '_' and '-', at most 64). Example: s-cluster01."
        )
    compression = get("BACKUP_COMPRESSION").lower() or "none"
    if compression not in COMPRESSIONS:
        problems.append(
            f"BACKUP_COMPRESSION: {quote(compression)} is not one of "
            f"{', '.join(COMPRESSIONS)}. Example: none."
        )
    parallel = _parse_int(
        get("BACKUP_PARALLEL_COMPONENTS"), "BACKUP_PARALLEL_COMPONENTS", 2, 1, 8, "2", problems
    )
    retention = _parse_int(
        get("BACKUP_RETENTION_DAYS"), "BACKUP_RETENTION_DAYS", 7, 2, 14, "7", problems
    )
    scheduler = _parse_bool(
        get("BACKUP_SCHEDULER_ENABLED"), "BACKUP_SCHEDULER_ENABLED", True, problems
    )
    schedule = get("BACKUP_SCHEDULE") or DEFAULT_SCHEDULE
    try:
        parse_schedule(schedule)
    except ConfigError as exc:
        problems.append(exc.message)  # "BACKUP_SCHEDULE: ... Example: ..."
    stamp_version = get("BACKUP_STAMP_VERSION") or None
    if stamp_version is not None:
        from infrabackup.versions import parse_version  # local: versions imports errors only

        try:
            parse_version(stamp_version)
        except ConfigError as exc:
            problems.append(f"BACKUP_STAMP_VERSION: {exc.message}")
    for cert_setting, cert_example in (
        ("BACKUP_ENCRYPTION_CERT", "/etc/infrabackup/backup.cer"),
        ("BACKUP_DECRYPTION_CERT", "/secure/backup.pfx"),
        ("BACKUP_DRILL_CERT", "/secure/backup.pfx"),
    ):
        _check_file_setting(get(cert_setting), cert_setting, cert_example, problems)
    stale_after = _parse_stale_after(get("BACKUP_STALE_AFTER_HOURS"), schedule, problems)
    verify_schedule = _parse_verify_schedule(get("BACKUP_VERIFY_SCHEDULE"), problems)
    encryption_key = get("BACKUP_ENCRYPTION_KEY")
    sources = _parse_sources(get("BACKUP_SOURCES"), problems)
    _check_source_settings(sources, env, problems)
    sources = tuple(_credentials(spec, env) for spec in sources)
    storage, storage_error = _storage_setting(env, problems)

    if problems:
        raise ConfigError(_join(problems), setting=problems[0].split(":", 1)[0])
    return Settings(
        share_path=share_path,
        share_port=port,
        share_require_encryption=require_enc,
        share_timeout_seconds=timeout,
        share_username=get("BACKUP_SHARE_USERNAME") or None,
        share_password=_secret(env.get("BACKUP_SHARE_PASSWORD")),
        external_domain=domain.lower() if domain else None,
        region=region.lower() if region else None,
        scale_unit=scale_unit,
        encryption_cert=get("BACKUP_ENCRYPTION_CERT") or None,
        encryption_key=_secret(encryption_key),
        decryption_cert=get("BACKUP_DECRYPTION_CERT") or None,
        decryption_cert_password=_secret(env.get("BACKUP_DECRYPTION_CERT_PASSWORD")),
        sources=sources,
        schedule=schedule,
        scheduler_enabled=scheduler,
        retention_days=retention,
        compression=compression,
        parallel_components=parallel,
        stamp_version=stamp_version,
        stale_after_hours=stale_after,
        verify_schedule=verify_schedule,
        drill_cert=get("BACKUP_DRILL_CERT") or None,
        drill_client_id=get("BACKUP_DRILL_CLIENT_ID") or None,
        appinsights_connection_string=_secret(env.get("APPLICATIONINSIGHTS_CONNECTION_STRING")),
        webjobs_storage=_secret(env.get("AzureWebJobsStorage")),
        storage=storage,
        storage_error=storage_error,
        given=given,
    )


#: Problems listed in one message; a sources list of thousands of bad entries is cut.
MAX_PROBLEMS_SHOWN = 20


def _join(problems: list[str]) -> str:
    if len(problems) == 1:
        return problems[0]
    shown = [f"  - {p}" for p in problems[:MAX_PROBLEMS_SHOWN]]
    if len(problems) > MAX_PROBLEMS_SHOWN:
        shown.append(f"  - ... and {len(problems) - MAX_PROBLEMS_SHOWN} more")
    return f"{len(problems)} settings are wrong:\n" + "\n".join(shown)


def _secret(value: str | None) -> Secret | None:
    return Secret(value) if value else None


def _is_dns_name(name: str) -> bool:
    if len(name) > 253:
        return False
    return all(_DNS_LABEL_RE.fullmatch(label) for label in name.split("."))


def is_dns_name(name: str) -> bool:
    """Whether ``name`` is an ASCII DNS name (BACKUP_EXTERNAL_DOMAIN's rule)."""
    return _is_dns_name(name)


def is_dns_label(name: str) -> bool:
    """Whether ``name`` is one ASCII DNS label (BACKUP_REGION's rule)."""
    return bool(_DNS_LABEL_RE.fullmatch(name))


def is_safe_name(name: str) -> bool:
    """A single path component that is valid and harmless on Windows and POSIX (component,
    OEM and file names; ids and names from requests)."""
    if not NAME_RE.fullmatch(name) or name.endswith("."):
        return False
    return name.split(".")[0].upper() not in _WINDOWS_RESERVED


def _parse_host(host: str) -> str | None:
    """Reason the UNC host is unacceptable, or None when it is an FQDN or an IP."""
    bare = host.strip("[]")
    try:
        ipaddress.ip_address(bare)
        return None
    except ValueError:
        pass
    if "." not in host:
        return (
            f"host {quote(host)} is a bare NetBIOS name; the share must be named by a fully "
            "qualified domain name (or an IP address when name resolution is not possible)"
        )
    if not _is_dns_name(host):
        return f"host {quote(host)} is not a valid DNS name"
    return None


#: Windows refuses longer share names.
MAX_SHARE_NAME = 80


def parse_unc(value: str) -> UncPath:
    """Parse ``\\\\host\\share[\\folder...]`` (forward slashes accepted); ConfigError if bad."""
    example = r"Example: \\fileserver01.contoso.com\AzSBackups"
    problem = path_problem(value)
    if problem:
        raise ConfigError(f"{quote(value)} cannot be a UNC path: {problem}. {example}")
    parts = [p for p in re.split(r"[\\/]", value[2:]) if p]
    if len(parts) < 2:
        raise ConfigError(
            f"{quote(value)} names no share: a UNC path is \\\\host\\share[\\folder]. {example}"
        )
    host, share, *folders = parts
    reason = _parse_host(host)
    if reason:
        raise ConfigError(f"{reason}. {example} or \\\\192.0.2.10\\AzSBackups")
    if len(share) > MAX_SHARE_NAME:
        raise ConfigError(f"the share name {quote(share, 40)} has {len(share)} characters; "
                          f"a share name has at most {MAX_SHARE_NAME}. {example}")
    for part in (share, *folders):
        if part in (".", "..") or any(c in part for c in '<>:"|?*'):
            raise ConfigError(f"{quote(part)} is not a valid share or folder name. {example}")
    return UncPath(host=host.strip("[]").lower(), share=share, folders=tuple(folders))


def _parse_share_path(value: str, problems: list[str]) -> UncPath | Path | None:
    if not value:
        return None
    if value.startswith(("\\\\", "//")):
        try:
            return parse_unc(value)
        except ConfigError as exc:
            problems.append(f"BACKUP_SHARE_PATH: {exc.message}")
            return None
    if value.startswith("\\"):
        problems.append(
            f"BACKUP_SHARE_PATH: {quote(value)} starts with one backslash; a UNC path starts "
            r"with two. Example: \\fileserver01.contoso.com\AzSBackups"
        )
        return None
    problem = path_problem(value)
    if problem is None:
        local = Path(value).expanduser().absolute()
        problem = path_problem(str(local))  # a relative path grows by the working folder
        if problem is None:
            return local
    problems.append(f"BACKUP_SHARE_PATH: {quote(value)} cannot be used: {problem}. "
                    r"Example: /srv/backups, or \\fileserver01.contoso.com\AzSBackups")
    return None


def _check_file_setting(value: str, name: str, example: str, problems: list[str]) -> None:
    """A setting that names a local file or a Key Vault URL: the file name must be one
    the file system can open (checked before anything is written; read when used)."""
    if not value or value.lower().startswith(("https://", "http://")):
        return
    problem = path_problem(value)
    if problem:
        problems.append(f"{name}: {quote(value)} cannot be a file name: {problem}. "
                        f"Example: {example}, or a Key Vault URL.")


def _parse_int(
    value: str, name: str, default: int, low: int, high: int, example: str, problems: list[str]
) -> int:
    if not value:
        return default
    number = ascii_int(value)
    if number is None:
        problems.append(f"{name}: {quote(value)} is not a whole number (ASCII digits 0-9). "
                        f"Example: {example}.")
        return default
    if not low <= number <= high:
        problems.append(
            f"{name}: {number} is outside {low}-{high}. Example: {example}."
        )
    return number


def _parse_verify_schedule(value: str, problems: list[str]) -> str:
    """BACKUP_VERIFY_SCHEDULE: NCRONTAB firing at least once a day (the rotation of
    infrabackup.verification re-reads every backup within its retention period in daily
    runs)."""
    from infrabackup.staleness import longest_gap  # local: it imports us

    schedule = value or DEFAULT_VERIFY_SCHEDULE
    try:
        gap = longest_gap(schedule)
    except ConfigError as exc:
        problems.append("BACKUP_VERIFY_SCHEDULE" + exc.message.removeprefix("BACKUP_SCHEDULE"))
        return schedule
    if gap is None or gap > dt.timedelta(days=1):
        problems.append(
            f"BACKUP_VERIFY_SCHEDULE: {quote(schedule)} does not run every day; verification "
            "must run at least daily to re-read every backup within BACKUP_RETENTION_DAYS. "
            f"Example: {DEFAULT_VERIFY_SCHEDULE} (03:30 UTC daily).")
    return schedule


def _parse_stale_after(value: str, schedule: str, problems: list[str]) -> int | None:
    """BACKUP_STALE_AFTER_HOURS: unset (derived from the schedule), or whole hours that fit
    the schedule (infrabackup.staleness says why and how)."""
    if not value:
        return None
    from infrabackup.staleness import MAX_STALE_AFTER_HOURS, check_setting  # local: it imports us

    before = len(problems)
    hours = _parse_int(value, "BACKUP_STALE_AFTER_HOURS", 0, 1, MAX_STALE_AFTER_HOURS, "25",
                       problems)
    if len(problems) == before:
        why = check_setting(hours, schedule)
        if why:
            problems.append(why)
    return hours


def _parse_float(
    value: str, name: str, default: float, low: float, high: float, problems: list[str]
) -> float:
    if not value:
        return default
    number = ascii_decimal(value)
    if number is None:
        problems.append(f"{name}: {quote(value)} is not a number of seconds (ASCII digits, "
                        "an optional decimal point). Example: 60.")
        return default
    if not low <= number <= high:
        problems.append(f"{name}: {value} is outside {low:g}-{high:g} seconds. Example: 60.")
        return default
    return number


def _parse_bool(value: str, name: str, default: bool, problems: list[str]) -> bool:
    if not value:
        return default
    lowered = value.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    problems.append(f"{name}: {quote(value)} is not true or false. Example: true.")
    return default


def json_array_setting(name: str, value: str, problems: list[str], *, max_bytes: int,
                       noun: str, example: str, example_file: str) -> list[object] | None:
    """The JSON array a setting holds, inline or as ``@file`` (at most ``max_bytes``); None
    with one problem appended (naming ``name``, what is wrong, and ``example``) when it is
    not one. ``noun`` names the array's items; ``example_file`` is shown for a bad name."""
    what = "the value"
    if value.startswith("@"):
        file_name = value[1:]
        what = f"the file {quote(file_name)}"
        problem = path_problem(file_name)
        if problem:
            problems.append(f"{name}: {quote(file_name)} cannot be a file name: {problem}. "
                            f"Example: @{example_file}.")
            return None
        try:
            value = read_text_file(Path(file_name).expanduser(), max_bytes)
        except OSError as exc:
            problems.append(f"{name}: cannot read {quote(file_name)} "
                            f"({exc.strerror or exc}). {example}")
            return None
    try:
        data = load_json(value, max_bytes=max_bytes)
    except JsonInputError as exc:
        problems.append(f"{name}: {what} is not usable: {exc}. {example}")
        return None
    if not isinstance(data, list):
        problems.append(f"{name}: must be a JSON array of {noun}. {example}")
        return None
    return data


def _parse_sources(value: str, problems: list[str]) -> tuple[SourceSpec, ...]:
    name = "BACKUP_SOURCES"
    example = 'Example: [{"name": "ACS", "type": "directory", "path": "/data/acs"}].'
    if not value:
        return ()
    data = json_array_setting(name, value, problems, max_bytes=MAX_SOURCES_BYTES,
                              noun="sources", example=example,
                              example_file="/etc/infrabackup/sources.json")
    if data is None:
        return ()
    if not data:
        problems.append(f"{name}: the array is empty, so a backup would hold nothing. List "
                        f"at least one source. {example}")
        return ()
    specs: list[SourceSpec] = []
    seen: dict[str, str] = {}
    for index, item in enumerate(data):
        where = f"{name}[{index}]"
        before = len(problems)
        spec = _parse_source(item, where, example, problems)
        if spec is None or len(problems) > before:
            continue
        # Shares are case-insensitive: ACS and acs would be one file.
        key = spec.name.lower()
        if key in seen:
            problems.append(
                f"{where}: name '{spec.name}' is used twice (also by {seen[key]}); names "
                "must be unique, ignoring case. Example: ACS and ACS2."
            )
            continue
        seen[key] = where
        specs.append(spec)
    return tuple(specs)


_SOURCE_FIELDS = {
    "name", "type", "scope", "path", "container", "prefix", "connection",
    "usernameSetting", "passwordSetting", "include", "exclude", "port",
}


def _parse_source(
    item: object, where: str, example: str, problems: list[str]
) -> SourceSpec | None:
    if not isinstance(item, dict):
        problems.append(f"{where}: must be an object. {example}")
        return None
    unknown = sorted(set(item) - _SOURCE_FIELDS)
    if unknown:
        problems.append(
            f"{where}: unknown field(s) {', '.join(quote(k, 40) for k in unknown[:5])}; known: "
            f"{', '.join(sorted(_SOURCE_FIELDS))}."
        )
    for key, val in item.items():
        if key in ("include", "exclude"):
            if not isinstance(val, list) or not all(isinstance(v, str) for v in val):
                problems.append(f"{where}.{key}: must be a list of glob strings. "
                                'Example: ["*.json", "config/**"].')
        elif key == "port":
            if isinstance(val, bool) or not isinstance(val, int) or not 1 <= val <= 65535:
                problems.append(f"{where}.port: must be a whole number 1-65535. Example: 445.")
        elif key in _SOURCE_FIELDS and not isinstance(val, str):
            problems.append(f"{where}.{key}: must be a string.")
    if len(problems) and problems[-1].startswith(where + "."):
        return None
    for key in ("connection", "usernameSetting", "passwordSetting"):
        if item.get(key) and not SETTING_NAME_RE.fullmatch(item[key]):
            problems.append(
                f"{where}.{key}: {quote(item[key])} is not an app setting name (ASCII letters, "
                "digits, '_' and '.', starting with a letter or '_'). Example: HLH_SHARE_PASSWORD.")
            return None
    src_name = item.get("name", "")
    if not src_name:
        problems.append(f"{where}.name: missing. {example}")
        return None
    if not is_safe_name(src_name):
        problems.append(
            f"{where}.name: {quote(src_name)} is not a safe component name (1-64 ASCII "
            "letters, digits, '.', '_' or '-', starting with a letter or digit, not a reserved "
            "device name). Example: ACS."
        )
        return None
    src_type = item.get("type", "directory")
    if src_type not in SOURCE_TYPES:
        problems.append(
            f"{where}.type: {quote(src_type)} is not one of {', '.join(SOURCE_TYPES)}. "
            f"{example}"
        )
        return None
    scope = item.get("scope", "backup")
    if scope not in SOURCE_SCOPES:
        problems.append(f"{where}.scope: {quote(scope)} is not backup or region. Example: "
                        "region.")
        return None
    lowered = src_name.lower()
    if scope == "region" and (lowered in RESERVED_REGION_NAMES
                              or lowered.startswith(RESERVED_REGION_PREFIX)):
        problems.append(
            f"{where}.name: {quote(src_name)} is the name of the service's own files beside "
            "MASBackup in the region folder (MASBackup, and every name starting "
            f"'{RESERVED_REGION_PREFIX}', ignoring case); a region-scoped source needs "
            "another name. Example: HLH.")
        return None
    if src_type in ("directory", "smb") and not item.get("path"):
        problems.append(f"{where}.path: missing for a {src_type} source. {example}")
        return None
    if src_type == "smb":
        try:
            parse_unc(item["path"])
        except ConfigError as exc:
            problems.append(f"{where}.path: {exc.message}")
            return None
    elif src_type == "directory":
        problem = path_problem(item["path"])
        if problem:
            problems.append(f"{where}.path: {quote(item['path'])} cannot be a folder path: "
                            f"{problem}. {example}")
            return None
    if src_type == "smb" and bool(item.get("usernameSetting")) != bool(
        item.get("passwordSetting")
    ):
        problems.append(
            f"{where}: an smb source names both usernameSetting and passwordSetting (the "
            "settings holding its credentials), or neither. Example: "
            '"usernameSetting": "HLH_SHARE_USERNAME", "passwordSetting": "HLH_SHARE_PASSWORD".'
        )
        return None
    if src_type == "blob" and not item.get("container"):
        problems.append(
            f"{where}.container: missing for a blob source. Example: "
            '{"name": "KeyVault", "type": "blob", "connection": "KV_STORAGE", '
            '"container": "kvdata"}.'
        )
        return None
    if src_type == "blob" and not item.get("connection"):
        problems.append(
            f"{where}.connection: missing for a blob source: name the setting that holds the "
            "storage connection string or account URL. Example: "
            '{"name": "KeyVault", "type": "blob", "connection": "KV_STORAGE", '
            '"container": "kvdata"}.'
        )
        return None
    return SourceSpec(
        name=src_name,
        type=src_type,
        scope=scope,
        path=item.get("path"),
        container=item.get("container"),
        prefix=item.get("prefix"),
        connection=item.get("connection"),
        username_setting=item.get("usernameSetting"),
        password_setting=item.get("passwordSetting"),
        include=tuple(item.get("include", ())),
        exclude=tuple(item.get("exclude", ())),
        port=item.get("port"),
    )


def _check_source_settings(
    sources: tuple[SourceSpec, ...], env: Mapping[str, str], problems: list[str]
) -> None:
    """Every setting a source names for its credentials must be set (values never shown).

    A blob source's ``connection`` may instead be an identity-based connection in the
    Azure Functions form: ``<connection>__blobServiceUri`` or ``<connection>__serviceUri``.
    """
    for spec in sources:
        for field_name, setting in (
            ("usernameSetting", spec.username_setting),
            ("passwordSetting", spec.password_setting),
        ):
            if setting and not env.get(setting, "").strip():
                problems.append(
                    f"{setting}: not set, but source {spec.name} names it as its "
                    f"{field_name}. Set it (a Key Vault reference in Azure). Example: "
                    f"{setting}=hlhbackup."
                )
        if spec.connection and not any(
            env.get(name, "").strip()
            for name in (spec.connection, f"{spec.connection}__blobServiceUri",
                         f"{spec.connection}__serviceUri")
        ):
            problems.append(
                f"{spec.connection}: not set, but source {spec.name} names it as its "
                "connection. Set it to a storage connection string, or set "
                f"{spec.connection}__blobServiceUri to the account URL to use the managed "
                f"identity. Example: {spec.connection}__blobServiceUri="
                "https://contosokv.blob.core.windows.net."
            )


def _storage_setting(env: Mapping[str, str], problems: list[str]
                     ) -> tuple[StorageAccount | None, ConfigError | None]:
    """The app's storage account from ``AzureWebJobsStorage``, when set. Set as a
    connection string, it must be one the Azure SDK can use (a problem; the value is never
    shown: it holds the account key); an incomplete identity-based form is an error only
    for what uses the storage (returned, deferred)."""
    from infrabackup.jobs.storage import SETTING, StorageAccount  # local: storage imports layout

    if not StorageAccount.configured(env):
        return None, None
    try:
        return StorageAccount.from_environ(env), None
    except ConfigError as exc:
        if env.get(SETTING, "").strip():
            problems.append(exc.message)
        return None, exc
