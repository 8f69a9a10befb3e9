"""The HTTP API's routes (docs/API.md): each validates its request, does one thing and
answers JSON. Status codes and the error shape are in :mod:`infrabackup.app.http_json`.

======  ==========================  ========================================================
POST    /api/backups                queue a backup: 202 + Location; 409 in a window or busy
GET     /api/backups                the job records, newest first, paged
GET     /api/backups/{backupId}     one record; 400 not a GUID, 404 unknown
POST    /api/backups/{backupId}/verify  queue its verification: 202 + Location; 409 busy
GET     /api/verifications/{verificationId}  one verification job's record
GET     /api/backup-configuration   settings (secrets masked), capacity, last/next backup
PUT     /api/maintenance            open the update/FRU window
DELETE  /api/maintenance            close it
GET     /api/maintenance            read it
POST    /api/prune?dryRun=true      what retention would delete (dryRun=false deletes)
GET     /api/stamps                 the fleet: every stamp, its place and its latest job
======  ==========================  ========================================================

Each route of a stamp is also at ``/api/stamps/{stampId}/...`` (backups, backups/{backupId},
backup-configuration, maintenance, prune); the routes above without the prefix are the
stamp ``default`` (the app's own settings), as they were before the fleet. An unknown
stamp is a 404 (:func:`in_stamp`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import azure.functions as func

from infrabackup.app.http_json import (
    BadRequest,
    bool_param,
    failure_response,
    handle,
    int_param,
    json_body,
    json_response,
    query,
    url_for,
)
from infrabackup.app.scheduler import next_run
from infrabackup.catalog import find_backup
from infrabackup.errors import ConfigError, InfraBackupError, NotFoundError, RefusedError
from infrabackup.jobs.job_queue import submit_backup
from infrabackup.jobs.job_store import ACTIVE, decode_token, encode_token
from infrabackup.jobs.maintenance import MaintenanceWindow, check_operation
from infrabackup.jobs.verify_job import submit_verification
from infrabackup.layout import parse_backup_id
from infrabackup.retention import prune as run_prune
from infrabackup.services import AppServices
from infrabackup.staleness import freshness, last_success_of

DEFAULT_PAGE = 20
MAX_PAGE = 100
MAX_NOTE = 200
_NO_PARAMS: frozenset[str] = frozenset()
_ENDED = frozenset({"Succeeded", "PartialSucceeded", "Failed"})


Route = Callable[[func.HttpRequest, AppServices], func.HttpResponse]


def in_stamp(route: Route, req: func.HttpRequest, services: AppServices) -> func.HttpResponse:
    """``route`` for the stamp the path names (``{stampId}``): 404 when the fleet has no such
    stamp, 500 when BACKUP_STAMPS itself is wrong."""
    stamp_id = req.route_params.get("stampId", "")
    try:
        services.fleet.get(stamp_id)
    except InfraBackupError as exc:
        return failure_response(exc)
    return route(req, services.for_stamp(stamp_id))


def _base(req: func.HttpRequest, services: AppServices) -> str:
    """The path the request's routes are under: /api/stamps/<id> or /api (stamp default)."""
    return f"/api/stamps/{services.stamp_id}" if "stampId" in req.route_params else "/api"


def _principal(req: func.HttpRequest, fallback: str = "api") -> str:
    """Who called, when App Service authentication tells (function keys do not)."""
    name = req.headers.get("x-ms-client-principal-name", "").strip()
    return f"api:{name[:100]}" if name else fallback


# --- backups -----------------------------------------------------------------------------


def start_backup(req: func.HttpRequest, services: AppServices) -> func.HttpResponse:
    """POST /api/backups — body optional: ``{"note": "why"}``."""

    def work() -> func.HttpResponse:
        query(req, _NO_PARAMS)
        body = json_body(req, {"note": (str, "a string")}, optional_body=True)
        note = body.get("note")
        if note is not None and len(note) > MAX_NOTE:
            raise BadRequest(f"Field 'note' has {len(note)} characters; at most {MAX_NOTE}.",
                             target="note")
        with services:
            backup_id = submit_backup(
                jobs=services.jobs, claim=services.claim, queue=services.queue,
                maintenance=services.maintenance, trigger="http", clock=services.clock,
                fields={"note": note, "requestedBy": _principal(req)},
                stamp_id=services.stamp_id)
        location = url_for(req, f"{_base(req, services)}/backups/{backup_id}")
        return json_response(202, {"backupId": backup_id, "status": "Queued",
                                   "location": location}, headers={"Location": location})

    return handle(work)


def list_backups(req: func.HttpRequest, services: AppServices) -> func.HttpResponse:
    """GET /api/backups?limit=20&continuationToken=..."""

    def work() -> func.HttpResponse:
        params = query(req, frozenset({"limit", "continuationToken"}))
        limit = int_param(params, "limit", DEFAULT_PAGE, 1, MAX_PAGE)
        after = None
        if "continuationToken" in params:
            try:
                after = decode_token(params["continuationToken"])
            except ConfigError as exc:
                raise BadRequest(exc.message, target="continuationToken") from None
        records, last = services.jobs.page(limit, after)
        token = encode_token(last) if last else None
        next_link = url_for(req, f"{_base(req, services)}/backups",
                            {"limit": str(limit), "continuationToken": token}) if token else None
        return json_response(200, {"backups": records, "continuationToken": token,
                                   "nextLink": next_link})

    return handle(work)


def get_backup(req: func.HttpRequest, services: AppServices) -> func.HttpResponse:
    """GET /api/backups/{backupId}"""

    def work() -> func.HttpResponse:
        query(req, _NO_PARAMS)
        raw = req.route_params.get("backupId", "")
        try:
            backup_id = parse_backup_id(raw)
        except ConfigError:
            raise BadRequest(f"backupId '{raw[:100]}' is not a GUID: backup ids look like "
                             "3f2b8c1e-4d5a-4b6c-9e7f-0a1b2c3d4e5f (GET /api/backups lists "
                             "them).", target="backupId", code="InvalidBackupId") from None
        record = services.jobs.get(backup_id)
        if record is None:
            raise NotFoundError(f"No backup job {backup_id} for this stamp. GET "
                                f"{_base(req, services)}/backups lists them.")
        return json_response(200, record)

    return handle(work)


# --- verification ----------------------------------------------------------------------


def _route_id(req: func.HttpRequest, name: str) -> str:
    raw = req.route_params.get(name, "")
    try:
        return parse_backup_id(raw)
    except ConfigError:
        raise BadRequest(f"{name} '{raw[:100]}' is not a GUID: ids look like "
                         "3f2b8c1e-4d5a-4b6c-9e7f-0a1b2c3d4e5f.", target=name,
                         code="InvalidBackupId") from None


def verify_backup(req: func.HttpRequest, services: AppServices) -> func.HttpResponse:
    """POST /api/backups/{backupId}/verify — queue a full verification of one backup
    (every byte re-read; with BACKUP_DRILL_CERT decrypted and authenticated too)."""

    def work() -> func.HttpResponse:
        query(req, _NO_PARAMS)
        backup_id = _route_id(req, "backupId")
        with services:
            if services.jobs.get(backup_id) is None:
                find_backup(services.share, services.layout, backup_id)  # 404 if not there
            verification_id = submit_verification(
                jobs=services.verifications, claim=services.verify_claim,
                queue=services.queue, maintenance=services.maintenance, trigger="http",
                clock=services.clock, stamp_id=services.stamp_id,
                fields={"targetBackupId": backup_id, "requestedBy": _principal(req)})
        location = url_for(req, f"{_base(req, services)}/verifications/{verification_id}")
        return json_response(202, {"verificationId": verification_id, "backupId": backup_id,
                                   "status": "Queued", "location": location},
                             headers={"Location": location})

    return handle(work)


def get_verification(req: func.HttpRequest, services: AppServices) -> func.HttpResponse:
    """GET /api/verifications/{verificationId}"""

    def work() -> func.HttpResponse:
        query(req, _NO_PARAMS)
        verification_id = _route_id(req, "verificationId")
        record = services.verifications.get(verification_id)
        if record is None:
            raise NotFoundError(f"No verification job {verification_id} for this stamp.")
        return json_response(200, record)

    return handle(work)


# --- the fleet ---------------------------------------------------------------------------


def list_stamps(req: func.HttpRequest, services: AppServices) -> func.HttpResponse:
    """GET /api/stamps — every stamp of the fleet, with its latest finished job. A stamp
    whose settings are wrong is listed with the error (the others are unaffected)."""

    def work() -> func.HttpResponse:
        query(req, _NO_PARAMS)
        return json_response(200, {"stamps": [_stamp_summary(req, services.for_stamp(i))
                                              for i in services.fleet.ids]})

    return handle(work)


def _stamp_summary(req: func.HttpRequest, stamp: AppServices) -> dict[str, Any]:
    base = f"/api/stamps/{stamp.stamp_id}"
    out: dict[str, Any] = {"id": stamp.stamp_id, "links": {
        "backups": url_for(req, f"{base}/backups"),
        "configuration": url_for(req, f"{base}/backup-configuration")}}
    try:
        settings = stamp.settings
        out.update(externalDomain=settings.external_domain, region=settings.region,
                   scaleUnit=settings.scale_unit, schedule=settings.schedule,
                   schedulerEnabled=settings.scheduler_enabled,
                   lastBackup=_brief(stamp.jobs.latest(_ENDED)))
    except InfraBackupError as exc:
        out["error"] = {"code": exc.code, "message": exc.message}
    return out


# --- configuration -----------------------------------------------------------------------


def get_configuration(req: func.HttpRequest, services: AppServices) -> func.HttpResponse:
    """GET /api/backup-configuration"""

    def work() -> func.HttpResponse:
        query(req, _NO_PARAMS)
        settings = services.settings
        layout = services.layout
        now = services.clock()
        share: dict[str, Any] = {"path": str(settings.share_path)}
        with services:
            try:
                capacity = services.share.capacity()
                share.update(freeBytes=capacity.free_bytes, totalBytes=capacity.total_bytes)
            except InfraBackupError as exc:
                # The configuration is still worth showing when the share is down.
                share["error"] = {"code": exc.code, "message": exc.message,
                                  "alert": exc.alert.title}
        last = services.jobs.latest(frozenset({"Succeeded", "PartialSucceeded"}))
        last_run = services.jobs.latest(frozenset({"Succeeded", "PartialSucceeded", "Failed"}))
        upcoming = next_run(settings.schedule, now) if settings.scheduler_enabled else None
        window = services.maintenance.current()
        return json_response(200, {
            "settings": settings.masked(),
            "stamp": {"id": settings.stamp_id, "externalDomain": layout.domain,
                      "region": layout.region,
                      "scaleUnit": layout.scale_unit, "version": settings.stamp_version},
            "share": share,
            "schedule": {"expression": settings.schedule,
                         "schedulerEnabled": settings.scheduler_enabled,
                         "nextBackupUtc": upcoming.isoformat() if upcoming else None},
            "retentionDays": settings.retention_days,
            "lastBackupUtc": _when(last),
            "nextBackupUtc": upcoming.isoformat() if upcoming else None,
            "lastBackup": _brief(last_run),
            "lastSuccessfulBackup": _brief(last),
            "maintenance": _window(window),
            "freshness": freshness(settings, last_success_of(last), now),
        })

    return handle(work)


def _when(record: dict[str, Any] | None) -> str | None:
    return (record.get("completedUtc") or record.get("createdUtc")) if record else None


def _brief(record: dict[str, Any] | None) -> dict[str, Any] | None:
    if record is None:
        return None
    return {k: record.get(k) for k in ("backupId", "status", "createdUtc", "completedUtc")}


def _window(window: MaintenanceWindow | None) -> dict[str, Any]:
    return {"open": window is not None, **(window.to_dict() if window else {})}


# --- maintenance -------------------------------------------------------------------------


def open_maintenance(req: func.HttpRequest, services: AppServices) -> func.HttpResponse:
    """PUT /api/maintenance ``{"operation": "update" | "fru"}``

    Opening a window while a backup runs is allowed: the backup goes on, and both the
    window and the job record note it.
    """

    def work() -> func.HttpResponse:
        query(req, _NO_PARAMS)
        body = json_body(req, {"operation": (str, "a string")}, required=("operation",))
        try:
            operation = check_operation(body["operation"])
        except ConfigError as exc:
            raise BadRequest(exc.message, target="operation") from None
        store = services.maintenance
        current = store.current()
        if current is not None:
            if current.operation != operation:
                raise RefusedError(f"A maintenance window for '{current.operation}' is already "
                               f"open since {current.started.isoformat()}; close it first "
                               "(DELETE /api/maintenance).")
            return json_response(200, {**_window(current), **_running_note(store.read())})
        window = MaintenanceWindow(operation, services.clock(), _principal(req))
        running = _running_job(services)
        store.start(window, running_backup=running)
        if running:
            services.jobs.update(running, maintenanceWindowOpened=window.to_dict())
        return json_response(200, {**_window(window),
                                   **_running_note({"backupRunningAtStart": running})})

    return handle(work)


def _running_job(services: AppServices) -> str | None:
    holder = services.claim.holder()
    if holder is None:
        return None
    record = services.jobs.get(holder)
    return holder if record is not None and record.get("status") in ACTIVE else None


def _running_note(stored: dict[str, Any] | None) -> dict[str, Any]:
    running = (stored or {}).get("backupRunningAtStart")
    if not running:
        return {"backupRunningAtStart": None}
    return {"backupRunningAtStart": running,
            "note": f"Backup {running} was queued or running when the window opened; it "
                    "goes on. New backups are skipped or refused until the window closes."}


def close_maintenance(req: func.HttpRequest, services: AppServices) -> func.HttpResponse:
    """DELETE /api/maintenance"""

    def work() -> func.HttpResponse:
        query(req, _NO_PARAMS)
        window = services.maintenance.end()
        return json_response(200, {"open": False,
                                   "ended": window.to_dict() if window else None})

    return handle(work)


def get_maintenance(req: func.HttpRequest, services: AppServices) -> func.HttpResponse:
    """GET /api/maintenance"""

    def work() -> func.HttpResponse:
        query(req, _NO_PARAMS)
        stored = services.maintenance.read()
        window = services.maintenance.window_of(stored)
        return json_response(200, {**_window(window),
                                   **(_running_note(stored) if window else {})})

    return handle(work)


# --- retention ---------------------------------------------------------------------------


def prune(req: func.HttpRequest, services: AppServices) -> func.HttpResponse:
    """POST /api/prune?dryRun=true — what retention would delete; ``dryRun=false``
    deletes it (holding the stamp lock: 409 while a backup runs)."""

    def work() -> func.HttpResponse:
        params = query(req, frozenset({"dryRun"}))
        dry_run = bool_param(params, "dryRun")
        if dry_run is None:
            raise BadRequest("Query parameter 'dryRun' is required: true lists what retention "
                             "would delete, false deletes it.", target="dryRun")
        with services:
            plan = run_prune(services.share, services.settings, services.layout,
                             services.clock(), dry_run=dry_run, holder="prune (api)")
        return json_response(200, plan.to_dict(dry_run))

    return handle(work)
