"""The embedded default: back up bundled sample data to a local folder share, verify,
restore, and show that the restored files are identical.

Everything lives under one folder (``.infrabackup-demo`` by default): ``sources/`` (a
fresh copy of the sample control-plane export), ``share/`` (the local-folder share),
``keys/`` (a demo certificate generated on first use), ``restore/`` and the
``local.settings.json`` it used, so every other command can be tried on the same data
with ``--settings``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from infrabackup.backup import BackupContext, run_backup
from infrabackup.catalog import list_backups
from infrabackup.keys.provider import decryption_keyring, encryption_wrapper
from infrabackup.keys.wrap import generate_certificate
from infrabackup.layout import stamp_layout, utcnow
from infrabackup.progress import Progress
from infrabackup.restore import restore_backup, verify_backup
from infrabackup.settings import load_settings
from infrabackup.share import LocalShare

SAMPLE_DATA = Path(__file__).parents[1] / "sample_data"
DEMO_SOURCES = [
    ("ACS", "backup"), ("CRP", "backup"), ("NRP", "backup"), ("KeyVault", "backup"),
    ("CA", "backup"), ("HLH", "region"), ("Switches", "region"),
]


def compare_trees(a: Path, b: Path) -> list[str]:
    """Differences between two folders: names, types, file bytes, link targets."""
    diffs: list[str] = []

    def walk(root: Path) -> dict[str, Path]:
        return {str(p.relative_to(root)): p for p in sorted(root.rglob("*"))}

    left, right = walk(a), walk(b)
    for rel in sorted(set(left) | set(right)):
        pa, pb = left.get(rel), right.get(rel)
        if pa is None or pb is None:
            diffs.append(f"{rel}: only in {'restore' if pa is None else 'source'}")
        elif pa.is_symlink() or pb.is_symlink():
            if not (pa.is_symlink() and pb.is_symlink()) or os.readlink(pa) != os.readlink(pb):
                diffs.append(f"{rel}: symbolic link differs")
        elif pa.is_dir() != pb.is_dir():
            diffs.append(f"{rel}: file/folder mismatch")
        elif pa.is_file() and not _same_bytes(pa, pb):
            diffs.append(f"{rel}: content differs")
    return diffs


def _same_bytes(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


def _prepare(work: Path, say: Callable[[str], None]) -> Path:
    sources = work / "sources"
    if sources.exists():
        shutil.rmtree(sources)
    shutil.copytree(SAMPLE_DATA, sources)
    # What git cannot carry in the package: an empty folder and a symbolic link.
    (sources / "NRP" / "pending").mkdir()
    (sources / "CA" / "current.crl").symlink_to("crl/azurestack-ca.crl")
    keys = work / "keys"
    keys.mkdir(exist_ok=True)
    if not (keys / "demo.cer").exists():
        password = secrets.token_urlsafe(24)
        cert = generate_certificate("demo", password)
        (keys / "demo.cer").write_bytes(cert.cer_der)
        for name, data in (("demo.pfx", cert.pfx), ("demo.pfx.password", password.encode())):
            fd = os.open(keys / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        say(f"Generated a self-signed DEMO certificate in {keys} (thumbprint "
            f"{cert.thumbprint}); for real backups make your own with 'infrabackup keygen'.")
    (work / "share").mkdir(exist_ok=True)
    values = {
        "BACKUP_SHARE_PATH": str(work / "share"),
        "BACKUP_EXTERNAL_DOMAIN": "contoso.com",
        "BACKUP_REGION": "nyc",
        "BACKUP_SCALE_UNIT": "s-cluster",
        "BACKUP_STAMP_VERSION": "1.2408.1.50",
        "BACKUP_ENCRYPTION_CERT": str(keys / "demo.cer"),
        "BACKUP_DECRYPTION_CERT": str(keys / "demo.pfx"),
        "BACKUP_DECRYPTION_CERT_PASSWORD": (keys / "demo.pfx.password").read_text(),
        "BACKUP_RETENTION_DAYS": "7",
        "BACKUP_SOURCES": json.dumps(
            [{"name": n, "type": "directory", "path": str(sources / n), "scope": s}
             for n, s in DEMO_SOURCES]
        ),
    }
    settings_file = work / "local.settings.json"
    fd = os.open(settings_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"IsEncrypted": False, "Values": values}, f, indent=2)
    return settings_file


def run_demo(
    work: Path, echo: Callable[[str], None] | None = None, progress: Progress | None = None
) -> dict[str, Any]:
    """Run backup → list → verify → restore → compare; return what happened."""
    say = echo or (lambda _text: None)
    work = work.absolute()
    work.mkdir(parents=True, exist_ok=True)
    settings_file = _prepare(work, say)
    settings = load_settings(environ={}, settings_file=settings_file)
    assert isinstance(settings.share_path, Path)
    share = LocalShare(settings.share_path)
    layout = stamp_layout(settings)
    say(f"Backing up {len(settings.sources)} sample components to {share.description} ...")
    ctx = BackupContext(settings, share, encryption_wrapper(settings, utcnow()))
    if progress is not None:
        ctx.progress = progress
    manifest = run_backup(ctx)
    say(f"Backup {manifest.backup_id} {manifest.status}: {manifest.size_bytes} bytes in "
        f"{manifest.duration_seconds:.2f} s, certificate {manifest.thumbprint}.")
    listing = list_backups(share, layout)
    say(f"The share holds {len(listing.backups)} backup(s); newest: "
        f"{listing.backups[0].backup_id}.")
    keyring = decryption_keyring(settings)
    report = verify_backup(share, layout, manifest.backup_id, keyring)
    say("Verify (decrypt and authenticate every segment): "
        + ("all components OK." if report.ok else "FAILED"))
    target = work / "restore" / manifest.backup_id
    restore_backup(share, layout, manifest.backup_id, keyring, target)
    diffs: list[str] = []
    for spec in settings.sources:
        assert spec.path is not None
        diffs += [f"{spec.name}/{d}" for d in compare_trees(Path(spec.path), target / spec.name)]
    identical = report.ok and not diffs
    say(f"Restored to {target}: "
        + ("identical to the sources, byte for byte." if identical else "DIFFERENT: "
           + "; ".join(diffs[:10])))
    # The command as this process was started, so the hint works without an activated venv.
    command = sys.argv[0] if sys.argv[0].endswith("infrabackup") else "infrabackup"
    say(f"Try: {command} --settings {settings_file} list   (or show/verify/prune)")
    return {
        "backupId": manifest.backup_id,
        "status": manifest.status,
        "share": share.description,
        "settingsFile": str(settings_file),
        "restoredTo": str(target),
        "verified": report.ok,
        "identical": identical,
        "differences": diffs,
    }
