"""The Functions app's test fixtures, registered once in tests/conftest.py (``pytest_plugins``)
so the modules that test the app through it (test_function_app, test_bad_input,
test_crash_jobs, test_input_properties, test_job_ownership, test_verification) use them
without importing them. ``keys`` is module-scoped: one key set per test module, as before.
A module that defines a fixture of the same name (its own ``keys``) overrides it.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.core.exceptions import ResourceExistsError
from azure.storage.queue import QueueClient, TextBase64DecodePolicy

from infrabackup.jobs.storage import QUEUE_NAME
from infrabackup.settings import ALL_SETTINGS
from tests.helpers import Keys, Stamp, make_keys, make_stamp, write_random
from tests.servers.samba import PASSWORD as SAMBA_PASSWORD
from tests.servers.samba import USERNAME as SAMBA_USERNAME
from tests.servers.samba import SambaSet

#: Recognisable secrets: none of them may appear in a table row or a response.
SHARE_PASSWORD = "Sh4re-Pa55word-QUOKKA"

#: The local folder behind each SMB stamp's share, by region.
SMB_FOLDERS: dict[str, Path] = {}


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return make_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture
def queue(azurite: str) -> QueueClient:
    """The job queue, empty: what the host would read from."""
    client = QueueClient.from_connection_string(azurite, QUEUE_NAME,
                                                message_decode_policy=TextBase64DecodePolicy())
    with contextlib.suppress(ResourceExistsError):
        client.create_queue()
    client.clear_messages()
    return client


def _stamp(tmp_path: Path, keys: Keys) -> Stamp:
    s = make_stamp(tmp_path, keys, [("ACS", "backup"), ("HLH", "region")])
    s.env["BACKUP_REGION"] = f"r{uuid.uuid4().hex[:10]}"
    write_random(s.source_dir("ACS") / "db.bin", 512 * 1024)
    (s.source_dir("HLH") / "bmc.json").write_text('{"bmc": "192.0.2.10"}')
    s.env["BACKUP_SHARE_PASSWORD"] = SHARE_PASSWORD
    return s


@pytest.fixture
def stamp(tmp_path: Path, keys: Keys, azurite: str, queue: QueueClient,
          monkeypatch: pytest.MonkeyPatch) -> Stamp:
    """A stamp on a local-folder share, its settings in the environment as app settings."""
    s = _stamp(tmp_path, keys)
    s.env["AzureWebJobsStorage"] = azurite
    apply_env(monkeypatch, s.env)
    return s


@pytest.fixture
def smb_stamp(tmp_path: Path, keys: Keys, azurite: str, queue: QueueClient,
              samba: SambaSet, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stamp]:
    """The same stamp on the real Samba share (a folder of its own in ``plain``)."""
    s = _stamp(tmp_path, keys)
    folder = f"fa-{uuid.uuid4().hex[:8]}"
    (samba.share_dir("plain") / folder).mkdir()
    SMB_FOLDERS[s.env["BACKUP_REGION"]] = samba.share_dir("plain") / folder
    s.env.update({
        "BACKUP_SHARE_PATH": f"\\\\127.0.0.1\\plain\\{folder}",
        "BACKUP_SHARE_PORT": str(samba.main.port),
        "BACKUP_SHARE_USERNAME": SAMBA_USERNAME,
        "BACKUP_SHARE_PASSWORD": SAMBA_PASSWORD,
        "BACKUP_SHARE_TIMEOUT_SECONDS": "20",
        "AzureWebJobsStorage": azurite,
    })
    apply_env(monkeypatch, s.env)
    yield s


def apply_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for name in ALL_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
