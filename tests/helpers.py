"""Test helpers: a stamp on a local-folder share, with keys, built from real settings."""

from __future__ import annotations

import datetime as dt
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infrabackup.backup import BackupContext, run_backup
from infrabackup.keys.provider import decryption_keyring, encryption_wrapper
from infrabackup.keys.wrap import GeneratedCertificate, generate_certificate
from infrabackup.layout import StampLayout, stamp_layout
from infrabackup.manifest import Manifest
from infrabackup.settings import Settings, load_settings
from infrabackup.share import LocalShare, Share


@dataclass
class Keys:
    """A certificate pair on disk."""

    cer: Path
    pfx: Path
    password: str
    cert: GeneratedCertificate


def make_keys(folder: Path, name: str = "test", bits: int = 2048) -> Keys:
    folder.mkdir(parents=True, exist_ok=True)
    password = f"pfx-{name}-password-Zq81"
    cert = generate_certificate(name, password, bits=bits)
    (folder / f"{name}.cer").write_bytes(cert.cer_der)
    (folder / f"{name}.pfx").write_bytes(cert.pfx)
    return Keys(folder / f"{name}.cer", folder / f"{name}.pfx", password, cert)


@dataclass
class Stamp:
    """A configured stamp: env values, the share, its layout, and a fixed or real clock."""

    root: Path
    keys: Keys
    env: dict[str, str] = field(default_factory=dict)
    now: dt.datetime | None = None

    @property
    def settings(self) -> Settings:
        return load_settings(environ=self.env)

    @property
    def share(self) -> Share:
        return LocalShare(Path(self.env["BACKUP_SHARE_PATH"]))

    @property
    def layout(self) -> StampLayout:
        return stamp_layout(self.settings)

    def set_sources(self, sources: list[dict[str, Any]]) -> None:
        self.env["BACKUP_SOURCES"] = json.dumps(sources)

    def source_dir(self, name: str) -> Path:
        path = self.root / "sources" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def backup(self, **kwargs: Any) -> Manifest:
        settings = self.settings
        clock = (lambda: self.now) if self.now else None
        ctx = BackupContext(settings, self.share, encryption_wrapper(settings, _utc()))
        if clock:
            ctx.clock = clock  # type: ignore[assignment]
        for key, value in kwargs.items():
            setattr(ctx, key, value)
        return run_backup(ctx)

    def keyring(self) -> Any:
        return decryption_keyring(self.settings)


def _utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def make_stamp(tmp: Path, keys: Keys, sources: list[tuple[str, str]] | None = None) -> Stamp:
    """A stamp whose share is ``tmp/share`` and whose sources are folders under tmp."""
    share = tmp / "share"
    share.mkdir(parents=True, exist_ok=True)
    stamp = Stamp(tmp, keys)
    stamp.env = {
        "BACKUP_SHARE_PATH": str(share),
        "BACKUP_EXTERNAL_DOMAIN": "contoso.com",
        "BACKUP_REGION": "nyc",
        "BACKUP_STAMP_VERSION": "1.2408.1.50",
        "BACKUP_ENCRYPTION_CERT": str(keys.cer),
        "BACKUP_DECRYPTION_CERT": str(keys.pfx),
        "BACKUP_DECRYPTION_CERT_PASSWORD": keys.password,
    }
    specs = []
    for name, scope in sources or [("ACS", "backup")]:
        specs.append({"name": name, "type": "directory", "path": str(stamp.source_dir(name)),
                      "scope": scope})
    stamp.set_sources(specs)
    return stamp


def stamp_with_sources(tmp: Path, keys: Keys, specs: list[dict[str, Any]],
                       env: dict[str, str] | None = None) -> Stamp:
    """A stamp (as make_stamp) backing up exactly ``specs``, with extra ``env`` settings."""
    stamp = make_stamp(tmp, keys)
    stamp.set_sources(specs)
    stamp.env.update(env or {})
    return stamp


def write_random(path: Path, size: int, seed: int = 0) -> Path:
    """A file of ``size`` pseudo-random bytes, written in pieces (never all in memory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 4 << 20)
            f.write(rng.randbytes(n))
            left -= n
    return path


def tree(root: Path) -> dict[str, Any]:
    """A comparable picture of a folder: files by content, links by target, folders."""
    out: dict[str, Any] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = ("link", os.readlink(path))
        elif path.is_dir():
            out[rel] = ("dir",)
        else:
            out[rel] = ("file", path.read_bytes())
    return out


def run_command(*args: str) -> tuple[int, Any]:
    """Run ``infrabackup ARGS --json`` in this process, with the settings in the environment
    (a test's own process, when the command's process is not what is tested); its exit code
    and its JSON output."""
    import contextlib
    import io

    from infrabackup.cli import main

    out = io.StringIO()
    code: Any = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        try:
            main([*args, "--json"])
        except SystemExit as exc:
            code = exc.code
    return int(code or 0), json.loads(out.getvalue() or "null")
