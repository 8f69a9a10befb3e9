"""The fleet: which stamps one app backs up (``BACKUP_STAMPS``), and each stamp's settings.

``BACKUP_STAMPS`` is a JSON array (inline, or ``@file``) of stamps::

    [{"id": "nyc-prod", "externalDomain": "contoso.com", "region": "nyc",
      "scaleUnit": "s-cluster01", "stampVersion": "1.2408.1.50",
      "settings": {"BACKUP_SHARE_PATH": "\\\\\\\\fs01.contoso.com\\\\AzSBackups",
                   "BACKUP_SCHEDULE": "0 30 1,13 * * *"},
      "secretSettings": {"BACKUP_SHARE_PASSWORD": "NYC_SHARE_PASSWORD"}}]

A stamp's settings are the app's ``BACKUP_*`` settings with the stamp's own values laid
over them: ``externalDomain``/``region``/``scaleUnit``/``stampVersion`` (BACKUP_EXTERNAL_DOMAIN,
BACKUP_REGION, BACKUP_SCALE_UNIT, BACKUP_STAMP_VERSION), ``settings`` (any of
:data:`OVERRIDABLE`, by its setting name) and ``secretSettings`` (a secret of
:data:`SECRET_OVERRIDES`, given only as the *name* of the app setting that holds it: a
secret is never written inline). Then the whole is validated by
:func:`infrabackup.settings.load_settings`, exactly as a single stamp's settings are.

The stamp ``default`` is the app's own settings (today's single-stamp settings): it is the
only stamp when ``BACKUP_STAMPS`` is unset, and it stays in the fleet beside the listed
stamps while the app's settings name a stamp of their own (``BACKUP_REGION`` set). So an
existing deployment keeps its job records, claim and window (their table keys are
:func:`infrabackup.jobs.storage.stamp_key`, domain + region, unchanged) when stamps are
added. A stamp id is a lowercase DNS label (1-63 of ``a-z``, ``0-9``, ``-``), unique;
``default`` cannot be listed. Two stamps may not share an external domain + region: they
would be one folder, one share lock and one table partition.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from infrabackup.errors import ConfigError, NotFoundError
from infrabackup.inputs import quote
from infrabackup.settings import (
    DEFAULT_STAMP,
    SETTING_NAME_RE,
    Settings,
    is_dns_label,
    is_dns_name,
    json_array_setting,
    load_settings,
    read_settings_file,
)

__all__ = ["DEFAULT_STAMP", "OVERRIDABLE", "SECRET_OVERRIDES", "SETTING", "Fleet", "StampSpec",
           "load_fleet", "load_stamp_settings"]

SETTING = "BACKUP_STAMPS"
STAMP_ID_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", re.ASCII)
#: Far larger than a fleet of a thousand stamps.
MAX_STAMPS_BYTES = 1024 * 1024
MAX_STAMPS = 1000

#: Settings a stamp may give its own value of in ``settings``.
OVERRIDABLE = frozenset({
    "BACKUP_SHARE_PATH", "BACKUP_SHARE_PORT", "BACKUP_SHARE_REQUIRE_ENCRYPTION",
    "BACKUP_SHARE_TIMEOUT_SECONDS", "BACKUP_SHARE_USERNAME", "BACKUP_ENCRYPTION_CERT",
    "BACKUP_DECRYPTION_CERT", "BACKUP_SOURCES", "BACKUP_SCHEDULE", "BACKUP_SCHEDULER_ENABLED",
    "BACKUP_RETENTION_DAYS", "BACKUP_COMPRESSION", "BACKUP_PARALLEL_COMPONENTS",
    "BACKUP_STALE_AFTER_HOURS", "BACKUP_DRILL_CERT",
})
#: Secrets (and the share user) a stamp names in ``secretSettings``: the setting holding it.
SECRET_OVERRIDES = frozenset({
    "BACKUP_SHARE_USERNAME", "BACKUP_SHARE_PASSWORD", "BACKUP_ENCRYPTION_KEY",
    "BACKUP_DECRYPTION_CERT_PASSWORD",
})
#: Fields of the stamp's own identity, and the setting each one sets.
_IDENTITY = {"externalDomain": "BACKUP_EXTERNAL_DOMAIN", "region": "BACKUP_REGION",
             "scaleUnit": "BACKUP_SCALE_UNIT", "stampVersion": "BACKUP_STAMP_VERSION"}
_FIELDS = frozenset({"id", "settings", "secretSettings", *_IDENTITY})
_EXAMPLE = ('Example: [{"id": "nyc-prod", "externalDomain": "contoso.com", "region": "nyc", '
            '"settings": {"BACKUP_SHARE_PATH": "/srv/backups"}}].')


@dataclass(frozen=True)
class StampSpec:
    """One stamp of the fleet: its id, where it is, and the settings it lays over the app's
    (setting name -> value, or for ``secret_settings`` -> the name of the setting holding it)."""

    id: str
    external_domain: str | None
    region: str | None
    scale_unit: str | None = None
    overrides: Mapping[str, str] = dataclasses.field(default_factory=dict)
    secret_settings: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def environ(self, base: Mapping[str, str]) -> dict[str, str]:
        """The app settings this stamp's settings are read from."""
        if self.id == DEFAULT_STAMP:
            return dict(base)
        env = dict(base)
        env["BACKUP_EXTERNAL_DOMAIN"] = self.external_domain or ""
        env["BACKUP_REGION"] = self.region or ""
        env["BACKUP_SCALE_UNIT"] = self.scale_unit or ""  # a scale unit is never inherited
        env.update(self.overrides)
        for name, holder in self.secret_settings.items():
            env[name] = base.get(holder, "")
        return env


@dataclass(frozen=True)
class Fleet:
    """The stamps one app backs up, ``default`` first when it is one of them."""

    stamps: tuple[StampSpec, ...]
    configured: bool  # BACKUP_STAMPS is set (a fleet), not the single stamp of old

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(s.id for s in self.stamps)

    def get(self, stamp_id: str) -> StampSpec:
        """The stamp ``stamp_id``; NotFoundError (an HTTP 404) naming the known ones."""
        for spec in self.stamps:
            if spec.id == stamp_id:
                return spec
        known = ", ".join(self.ids) or "none"
        shown = quote(stamp_id, 70)
        raise NotFoundError(f"No stamp {shown} in this app (stamps: {known}). BACKUP_STAMPS "
                            "lists them; GET /api/stamps or 'infrabackup list --all-stamps' "
                            "shows them.")


def load_fleet(environ: Mapping[str, str] | None = None,
               settings_file: str | Path | None = None) -> Fleet:
    """The fleet ``BACKUP_STAMPS`` describes (validated: shape, ids, identities, setting
    names); ConfigError listing every problem. Each stamp's settings are checked when they
    are read (:func:`load_stamp_settings`)."""
    env = _environ(environ, settings_file)
    value = env.get(SETTING, "").strip()
    default = StampSpec(DEFAULT_STAMP, env.get("BACKUP_EXTERNAL_DOMAIN", "").strip().lower()
                        or None, env.get("BACKUP_REGION", "").strip().lower() or None)
    if not value:
        return Fleet((default,), configured=False)
    problems: list[str] = []
    data = _read(value, problems)
    stamps: list[StampSpec] = []
    if env.get("BACKUP_REGION", "").strip():
        stamps.append(default)
    seen_ids: set[str] = set()
    where_of: dict[tuple[str | None, str | None], str] = {
        (default.external_domain, default.region): "the app's own settings (stamp default)"
    } if stamps else {}
    for index, item in enumerate(data or []):
        where = f"{SETTING}[{index}]"
        before = len(problems)
        spec = _parse_stamp(item, where, env, problems)
        if spec is None or len(problems) > before:
            continue
        if spec.id in seen_ids:
            problems.append(f"{where}.id: {spec.id!r} is used twice; stamp ids are unique. "
                            "Example: nyc-prod and nyc-test.")
            continue
        identity = (spec.external_domain, spec.region)
        if identity in where_of:
            problems.append(
                f"{where}: externalDomain {spec.external_domain} with region {spec.region} "
                f"is already {where_of[identity]}; two stamps would share one folder, share "
                "lock and job records. Give each stamp its own domain or region.")
            continue
        seen_ids.add(spec.id)
        where_of[identity] = f"stamp {spec.id}"
        stamps.append(spec)
    if not problems and not stamps:
        problems.append(f"{SETTING}: the array is empty and the app's settings name no stamp "
                        f"(BACKUP_REGION unset), so there is nothing to back up. {_EXAMPLE}")
    if problems:
        raise ConfigError(_join(problems), setting=SETTING)
    return Fleet(tuple(stamps), configured=True)


def load_stamp_settings(environ: Mapping[str, str] | None = None,
                        stamp_id: str = DEFAULT_STAMP,
                        settings_file: str | Path | None = None, *,
                        fleet: Fleet | None = None) -> Settings:
    """The validated settings of stamp ``stamp_id``: NotFoundError for a stamp the fleet
    does not have, ConfigError (naming the stamp) for a bad setting. ``fleet``: the
    environment's fleet when it was already loaded."""
    env = _environ(environ, settings_file)
    fleet = fleet if fleet is not None else load_fleet(env)
    spec = fleet.get(stamp_id)
    try:
        settings = load_settings(spec.environ(env))
    except ConfigError as exc:
        if stamp_id == DEFAULT_STAMP:
            raise
        raise ConfigError(f"stamp {stamp_id} ({SETTING}): {exc.message}",
                          setting=exc.setting) from None
    return dataclasses.replace(settings, stamp_id=stamp_id)


def _environ(environ: Mapping[str, str] | None, settings_file: str | Path | None
             ) -> dict[str, str]:
    env = dict(os.environ if environ is None else environ)
    if settings_file is not None:
        env.update(read_settings_file(settings_file))
    return env


def _read(value: str, problems: list[str]) -> list[object] | None:
    data = json_array_setting(SETTING, value, problems, max_bytes=MAX_STAMPS_BYTES,
                              noun="stamps", example=_EXAMPLE,
                              example_file="/etc/infrabackup/stamps.json")
    if data is None:
        return None
    if len(data) > MAX_STAMPS:
        problems.append(f"{SETTING}: {len(data)} stamps; one app backs up at most "
                        f"{MAX_STAMPS}. Split the fleet over two apps.")
        return None
    return data


def _parse_stamp(item: object, where: str, env: Mapping[str, str],
                 problems: list[str]) -> StampSpec | None:
    if not isinstance(item, dict):
        problems.append(f"{where}: must be an object. {_EXAMPLE}")
        return None
    unknown = sorted(set(item) - _FIELDS)
    if unknown:
        problems.append(f"{where}: unknown field(s) {', '.join(quote(k, 40) for k in unknown[:5])}"
                        f"; known: {', '.join(sorted(_FIELDS))}.")
    stamp_id = item.get("id")
    if not isinstance(stamp_id, str) or not stamp_id:
        problems.append(f"{where}.id: missing. {_EXAMPLE}")
        return None
    if STAMP_ID_RE.fullmatch(stamp_id):
        where = f"{SETTING}[{stamp_id}]"  # the stamp by its id from here on
    if not STAMP_ID_RE.fullmatch(stamp_id):
        problems.append(f"{where}.id: {quote(stamp_id, 70)} is not a stamp id (a lowercase "
                        "DNS label: 1-63 of a-z, 0-9 and '-', not starting or ending with "
                        "'-'). Example: nyc-prod.")
        return None
    if stamp_id == DEFAULT_STAMP:
        problems.append(f"{where}.id: 'default' is the stamp of the app's own settings "
                        "(BACKUP_EXTERNAL_DOMAIN, BACKUP_REGION, ...) and cannot be listed; "
                        "give this stamp another id. Example: nyc-prod.")
        return None
    for key in _IDENTITY:
        if key in item and not isinstance(item[key], str):
            problems.append(f"{where}.{key}: must be a string.")
            return None
    domain, region = item.get("externalDomain", ""), item.get("region", "")
    if not domain or not is_dns_name(domain):
        problems.append(f"{where}.externalDomain: {quote(domain) if domain else 'missing'}; "
                        "a DNS name is required. Example: contoso.com.")
    if not region or not is_dns_label(region):
        problems.append(f"{where}.region: {quote(region) if region else 'missing'}; a DNS "
                        "label is required. Example: nyc.")
    overrides = {name: item[key] for key, name in _IDENTITY.items()
                 if key in ("scaleUnit", "stampVersion") and item.get(key)}
    for name, raw in _object(item, "settings", where, problems).items():
        if name in SECRET_OVERRIDES - OVERRIDABLE:
            problems.append(f"{where}.settings.{name}: a secret is never written inline; name "
                            "the app setting that holds it (a Key Vault reference in Azure). "
                            f'Example: "secretSettings": {{"{name}": "NYC_{name[7:]}"}}.')
        elif name not in OVERRIDABLE:
            problems.append(f"{where}.settings: {quote(name, 60)} cannot differ per stamp; "
                            f"a stamp may set {', '.join(sorted(OVERRIDABLE))}.")
        else:
            text = _setting_value(raw)
            if text is None:
                problems.append(f"{where}.settings.{name}: must be a string, a number or "
                                "true/false (BACKUP_SOURCES: also the array itself).")
            else:
                overrides[name] = text
    secrets: dict[str, str] = {}
    for name, holder in _object(item, "secretSettings", where, problems).items():
        if name not in SECRET_OVERRIDES:
            problems.append(f"{where}.secretSettings: {quote(name, 60)} is not a secret a "
                            f"stamp names; known: {', '.join(sorted(SECRET_OVERRIDES))}.")
        elif not isinstance(holder, str) or not SETTING_NAME_RE.fullmatch(holder):
            problems.append(f"{where}.secretSettings.{name}: must be the name of an app "
                            "setting (ASCII letters, digits, '_' and '.'). Example: "
                            "NYC_SHARE_PASSWORD.")
        elif not env.get(holder, "").strip():
            problems.append(f"{holder}: not set, but stamp {stamp_id} names it as its {name}. "
                            f"Set it (a Key Vault reference in Azure). Example: {holder}=...")
        else:
            secrets[name] = holder
    return StampSpec(stamp_id, domain.lower() or None, region.lower() or None,
                     item.get("scaleUnit") or None, overrides, secrets)


def _object(item: dict[str, object], key: str, where: str,
            problems: list[str]) -> dict[str, object]:
    value = item.get(key, {})
    if not isinstance(value, dict):
        problems.append(f"{where}.{key}: must be an object of setting names. {_EXAMPLE}")
        return {}
    return value


def _setting_value(raw: object) -> str | None:
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, str | int | float):
        return str(raw)
    if isinstance(raw, list):
        return json.dumps(raw)
    return None


def _join(problems: list[str]) -> str:
    from infrabackup.settings import _join as join_problems  # one format for every setting

    return join_problems(problems)
