"""The host's rules at start-up and for poison messages, with the real worker: each test
starts its own host (tests/worker_host/) on settings of its own."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from azure.storage.queue import QueueClient

from infrabackup.jobs.job_queue import submit_backup
from infrabackup.jobs.storage import POISON_QUEUE_NAME, QUEUE_NAME
from infrabackup.services import AppServices
from tests.helpers import Stamp, make_keys, make_stamp
from tests.test_worker_host import app_settings, clear_job_queues
from tests.worker_host import closing_note
from tests.worker_host.host import FunctionsHost

REPO = Path(__file__).resolve().parents[1]


NOTED: list[FunctionsHost] = []


@contextlib.contextmanager
def note(request: pytest.FixtureRequest, label: str) -> Iterator[None]:
    """Add the host started inside to the run's closing note."""
    started = time.monotonic()
    NOTED.clear()
    try:
        yield
    finally:
        for host in NOTED:
            closing_note(request.config).add(f"{__name__}: {label}",
                                             time.monotonic() - started, host.summary())


@pytest.fixture
def stamp(tmp_path: Path) -> Stamp:
    s = make_stamp(tmp_path, make_keys(tmp_path / "keys"), [("ACS", "backup")])
    s.env["BACKUP_REGION"] = f"s{uuid.uuid4().hex[:10]}"
    (s.source_dir("ACS") / "state.json").write_text("{}")
    return s


def test_an_unset_backup_schedule_puts_only_the_timer_in_error(
        stamp: Stamp, azurite: str, request: pytest.FixtureRequest) -> None:
    # Given app settings without BACKUP_SCHEDULE (the app's own loader has a default).
    settings = app_settings(stamp, azurite)
    del settings["BACKUP_SCHEDULE"]
    clear_job_queues(azurite)

    # When the host indexes the app, then the timer is in error with the host's message,
    # and every other function runs.
    with note(request, "BACKUP_SCHEDULE unset"), FunctionsHost(REPO, settings) as host:
        NOTED.append(host)
        assert host.errors == {"scheduled_backup": "The 'scheduled_backup' function is in "
                               "error: '%BACKUP_SCHEDULE%' does not resolve to a value."}
        assert "run_backup_job" in host.functions and "start_backup" in host.functions
        answer = requests.get(host.url("/api/backup-configuration"), timeout=60,
                              headers={"x-functions-key": host.function_key})
        assert answer.status_code == 200, answer.text


def test_a_message_delivered_max_dequeue_count_times_goes_to_poison_and_fails_its_job(
        stamp: Stamp, azurite: str, request: pytest.FixtureRequest) -> None:
    # Given a queued job whose message was delivered twice already without finishing
    # (two instances died running it), and maxDequeueCount 2.
    settings = app_settings(stamp, azurite)
    settings["AzureFunctionsJobHost__extensions__queues__maxDequeueCount"] = "2"
    clear_job_queues(azurite)
    services = AppServices(environ=settings)
    backup_id = submit_backup(jobs=services.jobs, claim=services.claim, queue=services.queue,
                              maintenance=services.maintenance, trigger="http",
                              clock=services.clock)
    queue = QueueClient.from_connection_string(azurite, QUEUE_NAME)
    for _ in range(2):
        [message] = list(queue.receive_messages(visibility_timeout=1))
        time.sleep(1.5)
    assert message.dequeue_count == 2

    # When the host starts listening, then the third delivery is not run: the message moves
    # to the poison queue, whose function records the job Failed with the reason.
    with note(request, "poison at maxDequeueCount"), FunctionsHost(REPO, settings) as host:
        NOTED.append(host)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            record = services.jobs.get(backup_id) or {}
            if record.get("status") == "Failed":
                break
            time.sleep(0.25)
        invoked = {log.category for log in host.logs}
    assert record.get("status") == "Failed", record
    assert "poison queue" in record["error"]["message"]
    assert record["alert"]["name"] == "Backup failed due to a general fault"
    assert queue.peek_messages(5) == []
    assert QueueClient.from_connection_string(azurite, POISON_QUEUE_NAME).peek_messages(5) == []
    assert "infrabackup.backup" not in invoked  # no backup ran
    assert host.failures == []  # moved before any invocation; the poison function succeeded
