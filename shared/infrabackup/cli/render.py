"""How the ``infrabackup`` command shows its results: exit codes, text or one JSON
document (``--json``), and errors.

Exit codes: 0 success; 1 the operation failed (the alert's name and remediation on
stderr); 2 usage or configuration error; 3 refused (maintenance window, another backup
running, version gap). With ``--json`` an error is also printed as ``{"error": {...}}``.
"""

from __future__ import annotations

import json
from typing import Any

import click

from infrabackup.errors import ConfigError, InfraBackupError, RefusedError
from infrabackup.manifest import Manifest
from infrabackup.names import json_text

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3

MIB = 1024 * 1024


def exit_code(exc: InfraBackupError) -> int:
    """The command's exit code for ``exc``: 2 a setting or argument is wrong, 3 refused
    by a rule, 1 any other failure."""
    if isinstance(exc, ConfigError):
        return EXIT_USAGE
    if isinstance(exc, RefusedError):
        return EXIT_REFUSED
    return EXIT_FAILED


def emit(as_json: bool, data: Any, text: str) -> None:
    """Print a result: ``data`` as one JSON document with ``--json``, else ``text``."""
    click.echo(json_text(json.dumps(data, indent=2, ensure_ascii=False)) if as_json else text)


def report_error(exc: InfraBackupError, as_json: bool) -> None:
    """Print an error: its message on stderr (with the alert and remediation when the
    operation failed), and as ``{"error": {...}}`` on stdout with ``--json``."""
    if as_json:
        click.echo(json.dumps({"error": exc.to_dict()}, indent=2))
    prefix = {2: "error", 3: "refused"}.get(exit_code(exc), "error")
    click.echo(f"{prefix}: {exc.message}", err=True)
    if exit_code(exc) == EXIT_FAILED:
        if exc.alert_applies:
            click.echo(f"alert: {exc.alert.title}", err=True)
        click.echo(f"remediation: {exc.remediation}", err=True)


def summary(m: Manifest) -> dict[str, Any]:
    """A finished backup as ``list``/``show``/``backup`` print it in JSON."""
    return {
        "backupId": m.backup_id,
        "status": m.status,
        "createdUtc": m.created.isoformat(),
        "completedUtc": m.completed.isoformat(),
        "timeTakenSeconds": round(m.duration_seconds, 3),
        "sizeBytes": m.size_bytes,
        "stampVersion": m.stamp_version,
        "thumbprint": m.thumbprint,
        "encryptionMode": m.encryption.get("mode"),
        "components": [{"name": c.name, "status": c.status} for c in m.components],
    }


def record_line(r: dict[str, Any]) -> str:
    """One job record as a line of ``list``'s table."""
    size = f"{r['sizeBytes'] / MIB:7.1f} MiB" if r.get("sizeBytes") is not None else " " * 11
    took = f"{r['timeTakenSeconds']:6.1f}s" if r.get("timeTakenSeconds") is not None else " " * 7
    why = r.get("reason") or (r.get("alert") or {}).get("name") or r.get("thumbprint") or ""
    return (f"{r.get('backupId', ''):36}  {r.get('status', ''):16}  "
            f"{str(r.get('createdUtc', ''))[:19].replace('T', ' '):19}  {took}  {size}  "
            f"{r.get('stampVersion') or '':12}  {why}")
