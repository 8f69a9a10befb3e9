"""Helpers for the source tests: an SMB folder on the test Samba, a blob container on
Azurite, and a sample tree with the awkward cases (unicode, nesting, empty parts)."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob import BlobServiceClient, ContainerClient

from tests.helpers import write_random
from tests.servers.samba import PASSWORD, USERNAME, SambaSet

#: Names of the settings that hold the SMB source's credentials (never inline in JSON).
SMB_USER_SETTING = "SWITCHES_SHARE_USERNAME"
SMB_PASSWORD_SETTING = "SWITCHES_SHARE_PASSWORD"
BLOB_SETTING = "KEYVAULT_STORAGE"

EXCLUDE = ["*.tmp", "cache"]


@dataclass
class SmbFolder:
    """A fresh folder on the test Samba's ``plain`` share: the local path behind it too."""

    local: Path
    unc: str
    port: int

    def spec(self, name: str = "Switches", **extra: Any) -> dict[str, Any]:
        return {"name": name, "type": "smb", "path": self.unc, "port": self.port,
                "usernameSetting": SMB_USER_SETTING, "passwordSetting": SMB_PASSWORD_SETTING,
                **extra}

    @staticmethod
    def env(password: str = PASSWORD) -> dict[str, str]:
        return {SMB_USER_SETTING: USERNAME, SMB_PASSWORD_SETTING: password}


@pytest.fixture
def smb_folder(samba: SambaSet) -> Iterator[SmbFolder]:
    name = f"src-{uuid.uuid4().hex[:8]}"
    local = samba.share_dir("plain") / name
    local.mkdir()
    try:
        yield SmbFolder(local, f"\\\\127.0.0.1\\plain\\{name}", samba.main.port)
    finally:
        shutil.rmtree(local, ignore_errors=True)


@dataclass
class BlobFolder:
    """A fresh container on Azurite; the source uses ``prefix``."""

    container: ContainerClient
    connection_string: str
    prefix: str = "kv/"

    def spec(self, name: str = "KeyVault", **extra: Any) -> dict[str, Any]:
        return {"name": name, "type": "blob", "connection": BLOB_SETTING,
                "container": self.container.container_name, "prefix": self.prefix, **extra}

    def env(self) -> dict[str, str]:
        return {BLOB_SETTING: self.connection_string}

    def put(self, name: str, data: bytes) -> None:
        self.container.upload_blob(name, data, overwrite=True)

    def put_tree(self, root: Path) -> None:
        """Upload the files of ``root`` under the prefix (folders are virtual)."""
        for path in sorted(root.rglob("*")):
            if path.is_file():
                rel = "/".join(path.relative_to(root).parts)
                with open(path, "rb") as f:
                    self.container.upload_blob(self.prefix + rel, f, overwrite=True)

    def contents(self, under: str = "") -> dict[str, bytes]:
        return {b.name: self.container.download_blob(b.name).readall()
                for b in self.container.list_blobs(name_starts_with=under)}


@pytest.fixture
def blob_folder(azurite: str) -> Iterator[BlobFolder]:
    service = BlobServiceClient.from_connection_string(azurite)
    container = service.create_container(f"src-{uuid.uuid4().hex[:12]}")
    try:
        yield BlobFolder(container, azurite)
    finally:
        container.delete_container()
        service.close()


def fill_sample(root: Path, *, empty_folder: bool = True) -> None:
    """The awkward tree: unicode, nesting, an empty file, a multi-chunk file, left-outs."""
    (root / "deep" / "er" / "est").mkdir(parents=True, exist_ok=True)
    (root / "deep" / "er" / "est" / "state.json").write_text('{"a": 1}')
    (root / "ünïcødé ファイル.json").write_text("données")
    (root / "empty.txt").write_bytes(b"")
    write_random(root / "big.bin", 2 * 1024 * 1024 + 123, seed=7)
    (root / "deep" / "scratch.tmp").write_text("left out by *.tmp")
    (root / "cache").mkdir(exist_ok=True)
    (root / "cache" / "c.json").write_text("left out by cache")
    if empty_folder:
        (root / "empty-folder").mkdir(exist_ok=True)


def expected_tree(root: Path) -> dict[str, Any]:
    """What a component of ``root`` holds with :data:`EXCLUDE`: files by content, folders."""
    out: dict[str, Any] = {}
    for path in sorted(root.rglob("*")):
        rel = "/".join(path.relative_to(root).parts)
        if rel.split("/")[0] == "cache" or rel.endswith(".tmp"):
            continue
        out[rel] = ("dir",) if path.is_dir() else ("file", path.read_bytes())
    return out


def read_tree(root: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path in sorted(root.rglob("*")):
        rel = "/".join(path.relative_to(root).parts)
        out[rel] = ("dir",) if path.is_dir() else ("file", path.read_bytes())
    return out


def files_only(picture: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in picture.items() if v[0] == "file"}


def touch_later(path: Path, seconds: float = 10.0) -> None:
    st = path.stat()
    os.utime(path, (st.st_atime + seconds, st.st_mtime + seconds))
