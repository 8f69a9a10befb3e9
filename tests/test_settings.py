"""Settings are validated before anything is written: one message per bad setting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infrabackup.errors import ConfigError
from infrabackup.settings import UncPath, load_settings

GOOD = {"BACKUP_EXTERNAL_DOMAIN": "contoso.com", "BACKUP_REGION": "nyc"}


def _error(env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(environ={**GOOD, **env})
    return info.value.message


@pytest.mark.parametrize(
    ("value", "host", "share", "folders"),
    [
        (r"\\fileserver01.contoso.com\AzSBackups", "fileserver01.contoso.com", "AzSBackups", ()),
        (r"\\192.0.2.10\AzSBackups\sub\dir", "192.0.2.10", "AzSBackups", ("sub", "dir")),
        ("//fs.contoso.com/Backups", "fs.contoso.com", "Backups", ()),
        (r"\\[2001:db8::1]\AzSBackups", "2001:db8::1", "AzSBackups", ()),
    ],
)
def test_unc_paths_with_fqdn_or_ip_are_accepted(
    value: str, host: str, share: str, folders: tuple[str, ...]
) -> None:
    settings = load_settings(environ={**GOOD, "BACKUP_SHARE_PATH": value})
    assert settings.share_path == UncPath(host, share, folders)


def test_a_bare_netbios_name_is_refused_with_the_reason() -> None:
    message = _error({"BACKUP_SHARE_PATH": r"\\fileserver01\AzSBackups"})
    assert message.startswith("BACKUP_SHARE_PATH:")
    assert "bare NetBIOS name" in message and "fully qualified domain name" in message
    assert r"\\fileserver01.contoso.com\AzSBackups" in message  # an example of a good value


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"BACKUP_SHARE_PATH": r"\\fs.contoso.com"}, "names no share"),
        ({"BACKUP_SHARE_PATH": r"\fs.contoso.com\x"}, "one backslash"),
        ({"BACKUP_SHARE_PATH": r"\\fs.contoso.com\share\.."}, "not a valid share or folder"),
        ({"BACKUP_EXTERNAL_DOMAIN": "contoso..com"}, "BACKUP_EXTERNAL_DOMAIN"),
        ({"BACKUP_REGION": "new york"}, "BACKUP_REGION"),
        ({"BACKUP_SCALE_UNIT": "../x"}, "BACKUP_SCALE_UNIT"),
        ({"BACKUP_RETENTION_DAYS": "1"}, "BACKUP_RETENTION_DAYS: 1 is outside 2-14"),
        ({"BACKUP_RETENTION_DAYS": "15"}, "outside 2-14"),
        ({"BACKUP_RETENTION_DAYS": "seven"}, "not a whole number"),
        ({"BACKUP_SHARE_PORT": "0"}, "BACKUP_SHARE_PORT"),
        ({"BACKUP_SHARE_REQUIRE_ENCRYPTION": "maybe"}, "not true or false"),
        ({"BACKUP_SHARE_TIMEOUT_SECONDS": "-1"}, "BACKUP_SHARE_TIMEOUT_SECONDS"),
        ({"BACKUP_SCHEDULE": "every day"}, "NCRONTAB"),
        ({"BACKUP_COMPRESSION": "gzip"}, "BACKUP_COMPRESSION: 'gzip' is not one of none, zstd"),
        ({"BACKUP_PARALLEL_COMPONENTS": "0"}, "BACKUP_PARALLEL_COMPONENTS: 0 is outside 1-8"),
        ({"BACKUP_STAMP_VERSION": "latest"}, "BACKUP_STAMP_VERSION"),
        ({"BACKUP_SOURCES": "[{"}, "not valid JSON"),
        ({"BACKUP_SOURCES": '{"name": "A"}'}, "JSON array"),
        ({"BACKUP_SOURCES": '[{"name": "../etc", "path": "/x"}]'}, "not a safe component name"),
        ({"BACKUP_SOURCES": '[{"name": "CON", "path": "/x"}]'}, "reserved"),
        ({"BACKUP_SOURCES": '[{"name": "A", "path": "/x"}, {"name": "a", "path": "/y"}]'},
         "used twice"),
        ({"BACKUP_SOURCES": '[{"name": "A", "type": "ftp", "path": "/x"}]'}, "not one of"),
        ({"BACKUP_SOURCES": '[{"name": "A", "path": "/x", "scope": "global"}]'},
         "not backup or region"),
        ({"BACKUP_SOURCES": '[{"name": "A"}]'}, "path: missing"),
        ({"BACKUP_SOURCES": '[{"name": "A", "path": "/x", "pasword": "x"}]'}, "unknown field"),
        ({"BACKUP_SOURCES": '[{"name": "A", "path": "/x", "include": "*.json"}]'},
         "list of glob"),
        ({"BACKUP_SOURCES": '[{"name": "S", "type": "smb", "path": "\\\\\\\\nas\\\\x"}]'},
         "NetBIOS"),
        ({"BACKUP_SOURCES": '[{"name": "B", "type": "blob"}]'}, "container: missing"),
    ],
)
def test_each_bad_setting_gets_a_message_naming_it(env: dict[str, str], needle: str) -> None:
    message = _error(env)
    assert needle in message
    assert "Example" in message or "example" in message or "known:" in message


def test_all_bad_settings_are_reported_at_once() -> None:
    message = _error({"BACKUP_RETENTION_DAYS": "20", "BACKUP_REGION": "a b",
                      "BACKUP_SHARE_PORT": "x"})
    assert message.startswith("3 settings are wrong")
    for name in ("BACKUP_RETENTION_DAYS", "BACKUP_REGION", "BACKUP_SHARE_PORT"):
        assert name in message


def test_sources_from_a_file_and_settings_from_local_settings_json(tmp_path: Path) -> None:
    sources = tmp_path / "sources.json"
    sources.write_text(json.dumps([{"name": "HLH", "path": "/d/hlh", "scope": "region",
                                    "exclude": ["*.tmp"]}]))
    settings_file = tmp_path / "local.settings.json"
    settings_file.write_text(json.dumps({"IsEncrypted": False, "Values": {
        "BACKUP_SOURCES": f"@{sources}", "BACKUP_RETENTION_DAYS": "14"}}))
    settings = load_settings(environ={**GOOD, "BACKUP_RETENTION_DAYS": "3"},
                             settings_file=settings_file)
    assert settings.retention_days == 14  # the file wins over the environment
    (spec,) = settings.sources
    assert (spec.name, spec.scope, spec.exclude) == ("HLH", "region", ("*.tmp",))


def test_a_settings_file_without_values_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "s.json"
    bad.write_text("[]")
    with pytest.raises(ConfigError, match="no \"Values\" object"):
        load_settings(environ={}, settings_file=bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(environ={}, settings_file=tmp_path / "missing.json")


def test_defaults_and_secrets_never_print() -> None:
    settings = load_settings(environ={**GOOD, "BACKUP_SHARE_PASSWORD": "S3cret-Share-PW!",
                                      "BACKUP_SHARE_PATH": "/srv/backups"})
    assert (settings.retention_days, settings.share_port, settings.schedule) == (
        7, 445, "0 0 */12 * * *")
    assert settings.share_timeout_seconds == 60.0
    assert "S3cret-Share-PW!" not in repr(settings)
    assert settings.masked()["BACKUP_SHARE_PASSWORD"] == "***"
    assert settings.share_password is not None
    assert settings.share_password.reveal() == "S3cret-Share-PW!"


def test_require_names_every_missing_setting() -> None:
    settings = load_settings(environ={})
    with pytest.raises(ConfigError) as info:
        settings.require("BACKUP_SHARE_PATH", "BACKUP_REGION")
    assert "BACKUP_SHARE_PATH: not set" in info.value.message
    assert "BACKUP_REGION: not set" in info.value.message
