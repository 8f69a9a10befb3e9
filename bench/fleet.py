"""The fleet benchmark: one app, many stamps, against Azurite — the figures to size the plan.

Usage: ``python -m bench.fleet [--stamps 200] [--per-day 2] [--workers 8] [--out DIR]``
(``make bench-fleet``; ``make bench-fleet FLEET_ARGS="--stamps 50"``). It starts its own
Azurite, makes ``--stamps`` stamps (each on a local folder of its own, one small source:
the queue and the tables are what is measured here, not the share — ``make bench`` measures
that), and then, as the app would:

1. one fleet tick at a due occurrence of every stamp's schedule: the time it takes and the
   queue depth it leaves (one message per stamp);
2. ``--workers`` threads (instances) drain the queue with the real queue worker: the time
   to drain the tick and the backups per minute;
3. a tick where nothing is due (the other 1439 ticks of a day).

Every request to the storage account is counted (an azure-core transport hook), so it prints
the storage transactions per backup, per idle tick and per day for ``--per-day`` backups of
each stamp, as a Markdown table. Not a test: it asserts nothing, it measures.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "shared"))

from azure.core.pipeline.transport import RequestsTransport  # noqa: E402
from azure.storage.queue import QueueClient, TextBase64DecodePolicy  # noqa: E402

from infrabackup.app import worker  # noqa: E402
from infrabackup.app.fanout import run_fleet_tick  # noqa: E402
from infrabackup.jobs.storage import QUEUE_NAME  # noqa: E402
from infrabackup.keys.wrap import generate_certificate  # noqa: E402
from infrabackup.services import AppServices  # noqa: E402
from tests.servers.azurite import Azurite  # noqa: E402

#: Storage requests by kind ("table", "queue"), counted at the transport.
COUNTS: Counter[str] = Counter()
_lock = threading.Lock()


def count_requests() -> None:
    """Count every request the storage SDKs send (their one transport)."""
    send = RequestsTransport.send

    def counted(self: RequestsTransport, request: Any, **kwargs: Any) -> Any:
        kind = "queue" if "/devstoreaccount1/infrabackup-jobs" in request.url else "table"
        with _lock:
            COUNTS[kind] += 1
        return send(self, request, **kwargs)

    RequestsTransport.send = counted  # type: ignore[method-assign]


def snapshot() -> Counter[str]:
    with _lock:
        return Counter(COUNTS)


def make_fleet(root: Path, stamps: int, per_day: int, storage: str) -> dict[str, str]:
    cert = generate_certificate("fleet-bench", "bench-pfx-password", bits=2048)
    (root / "bench.cer").write_bytes(cert.cer_der)
    every = 24 // per_day
    env = {"AzureWebJobsStorage": storage, "BACKUP_ENCRYPTION_CERT": str(root / "bench.cer"),
           "BACKUP_STAMP_VERSION": "1.2408.1.50", "BACKUP_SCHEDULE": f"0 0 */{every} * * *"}
    listed = []
    for n in range(stamps):
        stamp_id = f"st{n:04d}"
        source = root / "sources" / stamp_id
        source.mkdir(parents=True)
        (source / "state.json").write_text(json.dumps({"stamp": stamp_id, "pad": "x" * 4096}))
        share = root / "shares" / stamp_id
        share.mkdir(parents=True)
        listed.append({"id": stamp_id, "externalDomain": "bench.contoso.com", "region": stamp_id,
                       "settings": {"BACKUP_SHARE_PATH": str(share), "BACKUP_SOURCES": [
                           {"name": "ACS", "type": "directory", "path": str(source)}]}})
    env["BACKUP_STAMPS"] = json.dumps(listed)
    return env


def drain(env: dict[str, str], workers: int) -> tuple[float, Counter[str]]:
    """Run every queued job on ``workers`` threads; the seconds it took and the statuses."""
    statuses: Counter[str] = Counter()
    started = time.perf_counter()

    def instance() -> None:
        client = QueueClient.from_connection_string(
            env["AzureWebJobsStorage"], QUEUE_NAME, message_decode_policy=TextBase64DecodePolicy())
        while True:
            batch = list(client.receive_messages(max_messages=1, visibility_timeout=300))
            if not batch:
                return
            message = batch[0]
            status = worker.process_message(AppServices(environ=dict(env)),
                                            message.content.encode(), message_id=message.id,
                                            dequeue_count=message.dequeue_count)
            client.delete_message(message)
            with _lock:
                statuses[status] += 1

    threads = [threading.Thread(target=instance) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started, statuses


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stamps", type=int, default=200)
    parser.add_argument("--per-day", type=int, default=2, choices=(1, 2, 3, 4, 6, 8, 12, 24))
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None, help="keep the data here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    root = args.out or Path(tempfile.mkdtemp(prefix="infrabackup-fleet-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    azurite = Azurite(root / "azurite")
    (root / "azurite").mkdir(exist_ok=True)
    azurite.start()
    try:
        count_requests()
        env = make_fleet(root, args.stamps, args.per_day, azurite.connection_string)
        queue = QueueClient.from_connection_string(azurite.connection_string, QUEUE_NAME)
        due = dt.datetime.now(dt.UTC).replace(minute=0, second=5, microsecond=0)

        before = snapshot()
        started = time.perf_counter()
        ticks = run_fleet_tick(AppServices(environ=dict(env), clock=lambda: due))
        tick_seconds = time.perf_counter() - started
        tick_requests = sum((snapshot() - before).values())
        depth = queue.get_queue_properties().approximate_message_count
        queued = sum(t.outcome == "Queued" for t in ticks)

        before = snapshot()
        drain_seconds, statuses = drain(env, args.workers)
        drained = snapshot() - before
        backups = sum(statuses.values())

        before = snapshot()
        started = time.perf_counter()
        idle = run_fleet_tick(AppServices(environ=dict(env),
                                          clock=lambda: due + dt.timedelta(minutes=1)))
        idle_seconds = time.perf_counter() - started
        idle_requests = sum((snapshot() - before).values())
        assert all(t.outcome == "NotDue" for t in idle)
    finally:
        azurite.stop()

    per_backup = (tick_requests + sum(drained.values())) / max(backups, 1)
    per_day = 1440 * idle_requests + args.stamps * args.per_day * per_backup
    rows = [
        ("stamps", f"{args.stamps}", ""),
        ("worker threads (instances)", f"{args.workers}", "host.json batchSize 1"),
        ("due tick: time", f"{tick_seconds:.2f} s", f"{queued} jobs queued"),
        ("queue depth after the tick", f"{depth}", "one message per due stamp"),
        ("time to drain the tick", f"{drain_seconds:.1f} s",
         f"{backups} backups ({dict(statuses)}), {60 * backups / drain_seconds:.0f}/min"),
        ("storage transactions per backup", f"{per_backup:.1f}",
         f"tick {tick_requests / max(queued, 1):.1f} + worker "
         f"{sum(drained.values()) / max(backups, 1):.1f} (queue "
         f"{drained['queue'] / max(backups, 1):.1f}, "
         f"table {drained['table'] / max(backups, 1):.1f})"),
        ("idle tick (nothing due)", f"{idle_seconds:.2f} s, {idle_requests} transactions",
         "one schedule-mark read per stamp"),
        (f"transactions per day ({args.per_day} backups/stamp)", f"{per_day:,.0f}",
         "1440 ticks + the backups"),
    ]
    print("| figure | value | note |\n|---|---|---|")
    for name, value, note in rows:
        print(f"| {name} | {value} | {note} |")


if __name__ == "__main__":
    main()
