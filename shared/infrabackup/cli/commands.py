"""The ``infrabackup`` commands: each parses its options, asks :mod:`infrabackup.services`
for its parts, calls the core and renders the result (:mod:`infrabackup.cli.render`:
exit codes, text and ``--json`` output, errors).
"""

from __future__ import annotations

import getpass
import json
import logging
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from infrabackup import __version__
from infrabackup.allocator import tune_allocator
from infrabackup.catalog import INCOMPLETE, find_backup, list_backups
from infrabackup.cli.render import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    MIB,
    emit,
    exit_code,
    record_line,
    report_error,
    summary,
)
from infrabackup.errors import ConfigError, GeneralFault, InfraBackupError
from infrabackup.inputs import path_problem, quote
from infrabackup.jobs.backup_job import JobDependencies, NullJobRecord, run_backup_job
from infrabackup.jobs.job_recovery import CLI_TRIGGER, end_interrupted, new_run_token
from infrabackup.jobs.maintenance import (
    MaintenanceStore,
    MaintenanceWindow,
    check_operation,
    open_maintenance_store,
)
from infrabackup.keys.provider import decryption_keyring, require_decryption
from infrabackup.keys.wrap import generate_certificate, generate_legacy_key
from infrabackup.layout import stamp_layout, utcnow
from infrabackup.progress import progress_for
from infrabackup.restore import restore_backup, verify_backup
from infrabackup.retention import prune as run_prune
from infrabackup.services import AppServices
from infrabackup.settings import DEFAULT_SCHEDULE, Settings
from infrabackup.share import open_share
from infrabackup.share.probe import check_share
from infrabackup.staleness import describe, freshness
from infrabackup.telemetry import configure_telemetry

F = TypeVar("F", bound=Callable[..., Any])


def json_option(func: F) -> F:
    """Add ``--json`` to a command."""
    return click.option(
        "--json", "as_json", is_flag=True, help="Print one JSON document instead of text."
    )(func)


def checked_path(_ctx: click.Context, param: click.Parameter, value: str | None
                 ) -> str | None:
    """A path option's value, refused (exit 2) before anything is done when no file system
    could hold it: a control character, too long, a name over 255 bytes."""
    problem = path_problem(value) if value is not None else None
    if problem:
        raise click.BadParameter(f"{quote(value)} cannot be a path: {problem}.", param=param)
    return value


def runtime() -> AppServices:
    """This invocation's parts (:mod:`infrabackup.services`): settings loaded once, the
    share opened once and closed when the command ends."""
    obj = click.get_current_context().obj
    assert isinstance(obj, AppServices)
    return obj


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--settings", "settings_file", metavar="FILE",
    help="A local.settings.json whose Values are used (they win over the environment).",
)
@click.option("-v", "--verbose", is_flag=True, help="Log progress details to stderr.")
@click.version_option(__version__, prog_name="infrabackup")
@click.pass_context
def cli(ctx: click.Context, settings_file: str | None, verbose: bool) -> None:
    """Infrastructure Backup Service: encrypted backups of control-plane state to a share.

    Settings come from the environment (or --settings FILE); see the README's table.
    Start with 'infrabackup demo' to see a backup, verify and restore on sample data.
    """
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    runtime_ = AppServices(settings_file=settings_file)
    ctx.obj = runtime_
    ctx.call_on_close(runtime_.close)


# --- keygen ---------------------------------------------------------------------------


def _read_password(password_file: str | None) -> str:
    if password_file:
        try:
            password = Path(password_file).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise ConfigError(
                f"--password-file: cannot read {password_file} ({exc.strerror})."
            ) from None
    elif sys.stdin.isatty():
        password = getpass.getpass("PFX password: ")
        if getpass.getpass("Repeat it: ") != password:
            raise ConfigError("The two passwords differ; nothing was written.")
    else:
        raise ConfigError(
            "keygen needs the PFX password: give --password-file FILE (stdin is not a terminal)."
        )
    if len(password) < 8:
        raise ConfigError("The PFX password must have at least 8 characters.")
    return password


@cli.command()
@click.option("--out", "out_dir", metavar="DIR", help="Folder for the files.",
              callback=checked_path)
@click.option("--name", default="infrabackup", show_default=True, help="File name stem.")
@click.option("--legacy-key", is_flag=True, help="Make a legacy (1811 and older) key instead.")
@click.option("--password-file", metavar="FILE", help="File holding the PFX password.",
              callback=checked_path)
@click.option("--key-vault", "key_vault", metavar="URL",
              help="Import the certificate into this Key Vault (https://<vault>.vault.azure.net) "
                   "instead of writing files.")
@json_option
def keygen(out_dir: str | None, name: str, legacy_key: bool, password_file: str | None,
           key_vault: str | None, as_json: bool) -> int:
    """Make a self-signed encryption certificate (NAME.cer, NAME.pfx) or a legacy key.

    With --key-vault the certificate is generated and imported into Key Vault (CER and
    PFX), and nothing is written locally.
    """
    from infrabackup.settings import is_safe_name

    if key_vault:
        if out_dir or legacy_key or password_file:
            raise ConfigError(
                "--key-vault: not with --out, --legacy-key or --password-file; the certificate "
                "is imported into Key Vault and nothing is written locally.")
        from infrabackup.keys.keyvault import keygen_to_vault

        imported = keygen_to_vault(key_vault, name)
        emit(as_json, imported.to_dict(),
             f"Certificate: {imported.certificate_url} (BACKUP_ENCRYPTION_CERT)\n"
             f"PFX secret:  {imported.secret_url} (BACKUP_DECRYPTION_CERT)\n"
             f"Version:     {imported.version}\nThumbprint:  {imported.thumbprint}\n"
             f"Expires:     {imported.not_after[:10]}")
        return EXIT_OK
    if not out_dir:
        raise ConfigError(
            "keygen: give --out DIR (files) or --key-vault URL (import into Key Vault).")
    if not is_safe_name(name):
        raise ConfigError(f"--name: '{name}' is not a safe file name. Example: backup-2026.")
    out = Path(out_dir)
    targets = [out / f"{name}.key"] if legacy_key else [out / f"{name}.cer", out / f"{name}.pfx"]
    existing = [str(t) for t in targets if t.exists()]
    if existing:
        raise ConfigError(f"--out: {', '.join(existing)} already exist(s); nothing was "
                          "overwritten. Choose another --name or folder.")
    out.mkdir(parents=True, exist_ok=True)
    if legacy_key:
        _write_private(targets[0], (generate_legacy_key() + "\n").encode())
        emit(as_json, {"keyFile": str(targets[0])},
             f"Legacy key written to {targets[0]} (set its content as BACKUP_ENCRYPTION_KEY; "
             "keep it in Key Vault).")
        return EXIT_OK
    generated = generate_certificate(name, _read_password(password_file))
    targets[0].write_bytes(generated.cer_der)
    _write_private(targets[1], generated.pfx)
    data = {
        "certificate": str(targets[0]),
        "pfx": str(targets[1]),
        "thumbprint": generated.thumbprint,
        "thumbprintSha256": generated.thumbprint_sha256,
        "notAfter": generated.not_after.isoformat(),
    }
    emit(as_json, data,
         f"Certificate: {targets[0]} (BACKUP_ENCRYPTION_CERT)\n"
         f"PFX:         {targets[1]} (BACKUP_DECRYPTION_CERT; keep it off the share)\n"
         f"Thumbprint:  {generated.thumbprint}\nExpires:     {generated.not_after:%Y-%m-%d}")
    return EXIT_OK


def _write_private(path: Path, data: bytes) -> None:
    """Write a file only its owner can read."""
    import os

    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


# --- check / backup ---------------------------------------------------------------------


@cli.command()
@json_option
def check(as_json: bool) -> int:
    """Check that the share is reachable, authenticates, is writable, and its capacity.

    Then, in each source of BACKUP_SOURCES, finish or undo what an interrupted restore
    left there (exit 1 if one is left that cannot be finished or undone now).
    """
    rt = runtime()
    settings = rt.settings
    settings.require("BACKUP_SHARE_PATH")
    layout = stamp_layout(settings) if settings.external_domain and settings.region else None
    report = check_share(rt.share, layout)
    cap = report.capacity
    assert cap is not None
    warnings = _deployment_warnings(settings)
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    # The sources: what an interrupted restore left there is finished or undone now.
    from infrabackup.staging import sweep
    from infrabackup.swap_journal import recover_sources

    sources = recover_sources(settings)
    recovered = sweep() + [note for item in sources for note in item.notes]
    data: dict[str, Any] = {
        "share": report.share, "steps": report.steps, "freeBytes": cap.free_bytes,
        "totalBytes": cap.total_bytes, "warnings": warnings, "recovered": recovered,
        "sources": [{"name": item.name, "recovered": item.notes,
                     "problem": item.problem.message if item.problem else None}
                    for item in sources]}
    lines = [f"Share {report.share}: " + ", ".join(report.steps) + ".",
             f"Free capacity: {cap.free_bytes / 1024**3:.1f} GiB of "
             f"{cap.total_bytes / 1024**3:.1f} GiB"]
    lines += [f"Recovered: {note}" for note in recovered]
    if sources and not recovered and not any(item.problem for item in sources):
        lines.append(f"Sources: no interrupted restore in {len(sources)} source(s).")
    if layout is not None:
        # Freshness: what "No successful backup" sees, from the backups on the share.
        # Informational: check is about the share, so a stale stamp does not fail it.
        newest = next((m for m in list_backups(rt.share, layout).backups
                       if m.status in ("Succeeded", "PartialSucceeded")), None)
        now = utcnow()
        data["freshness"] = freshness(settings, newest.completed if newest else None, now)
        lines += describe(data["freshness"], now)
    emit(as_json, data, "\n".join(lines))
    for item in sources:
        if item.pending and item.problem:
            click.echo(f"error: {item.problem.message}", err=True)
        elif item.problem:
            click.echo(f"warning: could not look at source {item.name} for interrupted "
                       f"restores: {item.problem.message}", err=True)
    return EXIT_FAILED if any(s.pending for s in sources) else EXIT_OK


def _deployment_warnings(settings: Settings) -> list[str]:
    """What the Functions app would do differently from this command with these settings."""
    if settings.is_set("BACKUP_SCHEDULE"):
        return []
    return ["BACKUP_SCHEDULE is not set. This command uses the default "
            f"({DEFAULT_SCHEDULE}), but the Functions host resolves %BACKUP_SCHEDULE% "
            "itself: without the app setting the timer function does not start and no "
            "scheduled backup runs. Set it, e.g. BACKUP_SCHEDULE=0 0 */12 * * *."]


@cli.command()
@json_option
def backup(as_json: bool) -> int:
    """Run one backup of every source now; print its id."""
    rt = runtime()
    settings = rt.settings
    settings.require("BACKUP_SHARE_PATH", "BACKUP_EXTERNAL_DOMAIN", "BACKUP_REGION",
                     "BACKUP_SOURCES", "BACKUP_STAMP_VERSION")
    telemetry = configure_telemetry(settings)
    jobs = _job_store()
    try:
        # With AzureWebJobsStorage set, the CLI shares the Functions app's job records and
        # maintenance window, so a window opened through the API stops it too; holding the
        # lock, it first ends the records of command-line backups that were killed.
        manifest = run_backup_job(JobDependencies(
            settings, rt.share, telemetry=telemetry, record=jobs or NullJobRecord(),
            maintenance=open_maintenance_store(settings, rt.share),
            progress=progress_for(as_json), extra_share=lambda: open_share(settings),
            owner=new_run_token(),
            record_fields={"trigger": CLI_TRIGGER, "host": socket.gethostname()},
            recover=None if jobs is None else lambda current: end_interrupted(
                jobs, rt.share, stamp_layout(settings), utcnow, holding_lock=True,
                skip=current)))
    finally:
        telemetry.flush()
    for warning in manifest.warnings:
        click.echo(f"warning: {warning}", err=True)
    failed = [c for c in manifest.components if c.status != "Succeeded"]
    for comp in failed:
        click.echo(f"warning: component {comp.name} failed: {comp.message}", err=True)
    emit(as_json, {"backupId": manifest.backup_id, **summary(manifest)},
         f"Backup {manifest.backup_id} {manifest.status}: {len(manifest.components)} "
         f"component(s), {manifest.size_bytes / MIB:.1f} MiB in "
         f"{manifest.duration_seconds:.1f} s.\n{manifest.backup_id}")
    return EXIT_OK


# --- list / show -------------------------------------------------------------------------


def _job_store() -> Any:
    """The Functions app's job records when AzureWebJobsStorage is set, else None."""
    from infrabackup.jobs.job_store import JobStore
    from infrabackup.jobs.storage import stamp_key

    settings = runtime().settings
    account = settings.storage_account()
    if account is None:
        return None
    return JobStore(account.table_client(), stamp_key(stamp_layout(settings)))


def _end_interrupted_records(jobs: Any) -> None:
    """Before showing records: end those of command-line backups that were killed (their
    share lock is free, or held under another run's token). The share is only asked when
    a record says Running; when it cannot be, the records are shown as they are."""
    rt = runtime()
    try:
        end_interrupted(jobs, rt.share, stamp_layout(rt.settings), utcnow,
                        holding_lock=False)
    except InfraBackupError as exc:
        logging.getLogger("infrabackup.cli").warning(
            "could not check for interrupted backups: %s", exc.message)


@cli.command("list")
@json_option
def list_command(as_json: bool) -> int:
    """The backups newest first: the Functions app's job records when AzureWebJobsStorage
    is set, otherwise the share's manifests."""
    rt = runtime()
    jobs = _job_store()
    if jobs is not None:
        _end_interrupted_records(jobs)
        records = list(jobs.records())
        header = (f"{'BACKUP ID':36}  {'STATUS':16}  {'CREATED (UTC)':19}  {'TIME':>7}  "
                  f"{'SIZE':>11}  {'VERSION':12}  CERTIFICATE / REASON / ALERT")
        emit(as_json, {"source": "jobRecords", "backups": records},
             "\n".join([header, *map(record_line, records)]) if records else "No backups yet.")
        return EXIT_OK
    listing = list_backups(rt.share, stamp_layout(rt.settings))
    data = {
        "backups": [summary(m) for m in listing.backups],
        "incomplete": [
            {"backupId": i.backup_id, "status": i.status, "createdUtc": i.created.isoformat(),
             "reason": i.reason}
            for i in listing.incomplete
        ],
    }
    lines = [f"{'BACKUP ID':36}  {'STATUS':16}  {'CREATED (UTC)':19}  {'TIME':>7}  "
             f"{'SIZE':>10}  {'VERSION':12}  CERTIFICATE / KEY"]
    for m in listing.backups:
        lines.append(
            f"{m.backup_id:36}  {m.status:16}  {m.created:%Y-%m-%d %H:%M:%S}  "
            f"{m.duration_seconds:6.1f}s  {m.size_bytes / MIB:7.1f} MiB  {m.stamp_version:12}  "
            f"{m.thumbprint or m.encryption.get('keyId', '')}"
        )
    for i in listing.incomplete:
        when = ("'prune' removes it" if i.status == INCOMPLETE else
                f"'prune' removes it {rt.settings.retention_days} days after it was made")
        lines.append(f"{i.backup_id:36}  {i.status:16}  {i.created:%Y-%m-%d %H:%M:%S}  "
                     f"({i.reason}; {when})")
    if len(lines) == 1:
        lines = ["No backups yet."]
    emit(as_json, data, "\n".join(lines))
    return EXIT_OK


@cli.command()
@click.argument("backup_id")
@json_option
def show(backup_id: str, as_json: bool) -> int:
    """One backup: status, times, size, version, certificate, components (the job record
    when AzureWebJobsStorage is set, otherwise the share's manifest)."""
    rt = runtime()
    jobs = _job_store()
    if jobs is not None:
        from infrabackup.errors import NotFoundError
        from infrabackup.layout import parse_backup_id

        wanted = parse_backup_id(backup_id)
        _end_interrupted_records(jobs)
        record = jobs.get(wanted)
        if record is None:
            raise NotFoundError(f"No backup job {wanted} in the job records of this stamp. "
                                "'infrabackup list' shows them.")
        text = [f"{k + ':':18}{json.dumps(v) if isinstance(v, dict | list) else v}"
                for k, v in record.items()]
        emit(as_json, record, "\n".join(text))
        return EXIT_OK
    m = find_backup(rt.share, stamp_layout(rt.settings), backup_id)
    lines = [
        f"Backup:       {m.backup_id}",
        f"Status:       {m.status}",
        f"Created:      {m.created:%Y-%m-%d %H:%M:%S} UTC",
        f"Time taken:   {m.duration_seconds:.1f} s",
        f"Size:         {m.size_bytes} bytes",
        f"Stamp:        {m.stamp.get('externalDomain')} / {m.stamp.get('region')}"
        + (f" / {m.stamp['scaleUnit']}" if m.stamp.get("scaleUnit") else ""),
        f"Version:      {m.stamp_version}",
        f"Encryption:   {m.encryption.get('mode')} "
        f"{m.thumbprint or m.encryption.get('keyId', '')}",
        "Components:",
    ]
    for c in m.components:
        lines.append(f"  {c.name:24} {c.status:10} {c.scope:7} {c.files:6} files "
                     f"{c.plaintext_bytes:>14} bytes" + (f"  ({c.message})" if c.message else ""))
    lines += [f"Warning:      {w}" for w in m.warnings]
    emit(as_json, m.to_dict(), "\n".join(lines))
    return EXIT_OK


# --- verify / restore ----------------------------------------------------------------------


@cli.command()
@click.argument("backup_id")
@json_option
def verify(backup_id: str, as_json: bool) -> int:
    """Check every component's digest; with BACKUP_DECRYPTION_CERT (or, for a legacy-key
    backup, BACKUP_ENCRYPTION_KEY) also unlock the backup, authenticate its manifest and
    decrypt every segment. Key material that cannot unlock the backup is an error."""
    rt = runtime()
    settings = rt.settings
    layout = stamp_layout(settings)
    manifest = find_backup(rt.share, layout, backup_id)
    # Key material that must unlock the backup and cannot is a KeyMaterialError saying
    # what the backup asks for and what is configured, never a quiet digests-only check.
    ring = decryption_keyring(settings)
    keyring = ring if ring.must_unlock(manifest.encryption) else None
    report = verify_backup(rt.share, layout, manifest.backup_id, keyring,
                           progress_for(as_json, "verifying"))
    data = {
        "backupId": report.backup_id,
        "ok": report.ok,
        "contentsChecked": report.contents_checked,
        "components": [{"name": c.name, "ok": c.ok, "message": c.message}
                       for c in report.components],
    }
    lines = [f"{'ok ' if c.ok else 'BAD'} {c.name}: {c.message}" for c in report.components]
    if not report.contents_checked:
        lines.append(f"Digests only (the manifest is not authenticated; this backup is in "
                     f"{manifest.encryption.get('mode')} mode): set BACKUP_DECRYPTION_CERT "
                     "(the PFX) to authenticate the manifest and decrypt every segment too.")
    emit(as_json, data, "\n".join(lines))
    if not report.ok:
        bad = ", ".join(c.name for c in report.components if not c.ok)
        click.echo(f"error: backup {report.backup_id} failed verification: {bad}", err=True)
        return EXIT_FAILED
    return EXIT_OK


@cli.command()
@click.argument("backup_id")
@click.option("--to", "to_dir", metavar="DIR", help="Restore into DIR/<component>/.",
              callback=checked_path)
@click.option("--to-sources", is_flag=True, help="Restore each component to its source.")
@click.option("--component", metavar="NAME", help="Only this component.")
@click.option("--target-version", metavar="V",
              help="The version of the redeployed stamp (the version rule is checked).")
@json_option
def restore(backup_id: str, to_dir: str | None, to_sources: bool, component: str | None,
            target_version: str | None, as_json: bool) -> int:
    """Decrypt a backup with the PFX and restore it.

    --to DIR gives DIR/<component>/ for inspection. --to-sources writes each component
    back to the BACKUP_SOURCES entry of its name, staged and authenticated first, then
    swapped in (docs/SOURCES.md).
    """
    if bool(to_dir) == to_sources:
        raise ConfigError("restore: give exactly one of --to DIR or --to-sources.")
    rt = runtime()
    settings = rt.settings
    ring = decryption_keyring(settings)
    require_decryption(ring)
    if to_sources:
        from infrabackup.restore_sources import restore_to_sources

        done = restore_to_sources(
            rt.share, stamp_layout(settings), backup_id, ring, settings,
            component=component, target_version=target_version,
            progress=progress_for(as_json, "restoring"),
        )
        lines = [f"Recovered: {note}" for note in done.recovered]
        for item in done.components:
            lines.append(f"Restored {item.name}: {item.files} files, {item.bytes} bytes -> "
                         f"{item.target}" + (f" (kept {len(item.kept)} left-out entries)"
                                             if item.kept else ""))
            lines += [f"  warning: {w}" for w in item.warnings]
        emit(as_json, {"backupId": done.backup_id, "toSources": True,
                       "components": [c.to_dict() for c in done.components],
                       "recovered": done.recovered}, "\n".join(lines))
        return EXIT_OK
    assert to_dir is not None
    result = restore_backup(
        rt.share, stamp_layout(settings), backup_id, ring, Path(to_dir),
        component=component, target_version=target_version,
        progress=progress_for(as_json, "restoring"),
    )
    data = {"backupId": result.backup_id, "destination": str(result.destination),
            "components": result.components, "recovered": result.recovered}
    lines = [f"Recovered: {note}" for note in result.recovered]
    for c in result.components:
        lines.append(f"Restored {c['name']}: {c['files']} files, {c['bytes']} bytes -> "
                     f"{c['path']}")
        warnings = c["warnings"]
        assert isinstance(warnings, list)
        lines += [f"  warning: {w}" for w in warnings]
    emit(as_json, data, "\n".join(lines))
    return EXIT_OK


# --- prune / maintenance ----------------------------------------------------------------


@cli.command()
@click.option("--dry-run", is_flag=True, help="Only list what would be deleted.")
@json_option
def prune(dry_run: bool, as_json: bool) -> int:
    """Apply retention (BACKUP_RETENTION_DAYS) and remove incomplete backups."""
    rt = runtime()
    settings = rt.settings
    result = run_prune(rt.share, settings, stamp_layout(settings), utcnow(),
                       dry_run=dry_run, holder="prune")
    data = result.to_dict(dry_run)
    verb = "Would delete" if dry_run else "Deleted"
    lines = [f"{verb} {i.backup_id} ({i.created:%Y-%m-%d %H:%M}Z, {i.reason})"
             for i in result.delete] or ["Nothing to delete."]
    lines.append(f"Kept {result.kept} backup(s).")
    lines += [f"Kept {i.backup_id} ({i.created:%Y-%m-%d %H:%M}Z) past the retention period: "
              f"{i.reason}." for i in result.kept_past_retention]
    emit(as_json, data, "\n".join(lines))
    return EXIT_OK


@cli.group()
def maintenance() -> None:
    """The update/FRU window during which backups are skipped or refused."""


def _maintenance_store() -> MaintenanceStore:
    """The window the Functions app uses (its table) when AzureWebJobsStorage is set,
    otherwise the share's file."""
    rt = runtime()
    return open_maintenance_store(rt.settings, rt.share)


@maintenance.command("start")
@click.option("--operation", type=click.Choice(["update", "fru"]), required=True)
@json_option
def maintenance_start(operation: str, as_json: bool) -> int:
    """Open the window: scheduled backups are skipped, on-demand ones refused."""
    window = MaintenanceWindow(check_operation(operation), utcnow(), f"cli:{getpass.getuser()}")
    _maintenance_store().start(window)
    emit(as_json, {"open": True, **window.to_dict()},
         f"Maintenance window open ({operation}); backups will not run until "
         "'infrabackup maintenance end'.")
    return EXIT_OK


@maintenance.command("end")
@json_option
def maintenance_end(as_json: bool) -> int:
    """Close the window."""
    window = _maintenance_store().end()
    emit(as_json, {"open": False, "ended": window.to_dict() if window else None},
         "Maintenance window closed." if window else "No maintenance window was open.")
    return EXIT_OK


@maintenance.command("status")
@json_option
def maintenance_status(as_json: bool) -> int:
    """Whether a window is open."""
    window = _maintenance_store().current()
    emit(as_json, {"open": window is not None, **(window.to_dict() if window else {})},
         f"Open: {window.operation} since {window.started:%Y-%m-%d %H:%M:%S}Z by "
         f"{window.started_by}" if window else "No maintenance window is open.")
    return EXIT_OK


# --- demo --------------------------------------------------------------------------------


@cli.command()
@click.option("--dir", "work_dir", default=".infrabackup-demo", show_default=True,
              callback=checked_path,
              metavar="DIR", help="Where the demo share, keys and restore go.")
@json_option
def demo(work_dir: str, as_json: bool) -> int:
    """Back up bundled sample data to a local folder share, verify, restore, compare."""
    from infrabackup.cli.demo import run_demo

    result = run_demo(Path(work_dir), echo=None if as_json else click.echo,
                      progress=progress_for(as_json))
    if as_json:
        emit(True, result, "")
    return EXIT_OK if result["identical"] else EXIT_FAILED


# --- entry point -------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the command, map errors to exit codes."""
    args = sys.argv[1:] if argv is None else argv
    as_json = "--json" in args
    tune_allocator()
    try:
        code = cli.main(args=args, prog_name="infrabackup", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        code = 130
    except click.ClickException as exc:
        exc.show()
        code = EXIT_USAGE
    except InfraBackupError as exc:
        report_error(exc, as_json)
        code = exit_code(exc)
    except Exception as exc:
        # A bug, not the operator's input (that is a ConfigError): one line and the general
        # alert rather than a traceback; -v logs the trace for the bug report.
        logging.getLogger("infrabackup.cli").info("unexpected error", exc_info=True)
        fault = GeneralFault(f"Unexpected internal error ({exc.__class__.__name__}); nothing "
                             "more is known. Run again with -v for the trace and report it.")
        report_error(fault, as_json)
        code = exit_code(fault)
    sys.exit(code if isinstance(code, int) else EXIT_OK)

