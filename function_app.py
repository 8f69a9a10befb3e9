"""Azure Functions entry point: wires triggers to the ``infrabackup`` package, nothing more.

Every HTTP route is at function-key level (docs/API.md). Backups run in the queue
worker, never in an HTTP request: the timer and ``POST /api/backups`` only queue them.
"""

import sys
from pathlib import Path

# Nothing of the repository is pip-installed in the app: the package is the folder
# shared/infrabackup, imported as infrabackup (never as shared.infrabackup).
sys.path.insert(0, str(Path(__file__).resolve().parent / "shared"))

import azure.functions as func

from infrabackup.allocator import tune_allocator
from infrabackup.app import api, fanout, openapi, verify, worker
from infrabackup.app.app_logging import quiet_sdk_logging
from infrabackup.jobs.storage import POISON_QUEUE_NAME, QUEUE_NAME
from infrabackup.services import AppServices, configure_app_telemetry

tune_allocator()  # once per worker process; why: shared/infrabackup/allocator.py
quiet_sdk_logging()  # the worker logs at INFO; why: shared/infrabackup/app/app_logging.py
app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
telemetry = configure_app_telemetry()
FUNCTION = func.AuthLevel.FUNCTION


def services() -> AppServices:
    """This invocation's settings, share and storage (read afresh each time)."""
    return AppServices(telemetry=telemetry)


@app.timer_trigger(arg_name="timer", schedule="%BACKUP_SCHEDULE%", run_on_startup=False,
                   use_monitor=True)
def scheduled_backup(timer: func.TimerRequest) -> None:
    fanout.run_app_tick(services(), past_due=timer.past_due)  # the run, then its heartbeat


# A fleet (BACKUP_STAMPS): every minute, one job per due stamp (shared/infrabackup/app/fanout.py).
@app.timer_trigger(arg_name="timer", schedule=fanout.FLEET_TICK, run_on_startup=False,
                   use_monitor=True)
def fleet_tick(timer: func.TimerRequest) -> None:
    fanout.run_fleet_tick(services(), past_due=timer.past_due)


@app.timer_trigger(arg_name="timer", schedule="%BACKUP_VERIFY_SCHEDULE%", run_on_startup=False,
                   use_monitor=True)
def scheduled_verification(timer: func.TimerRequest) -> None:
    verify.scheduled_verifications(services())  # one per stamp, queued: the worker runs them


@app.queue_trigger(arg_name="message", queue_name=QUEUE_NAME, connection="AzureWebJobsStorage")
def run_backup_job(message: func.QueueMessage) -> None:
    worker.process_message(services(), message.get_body(), message_id=message.id or "",
                           dequeue_count=message.dequeue_count or 1)


@app.queue_trigger(arg_name="message", queue_name=POISON_QUEUE_NAME,
                   connection="AzureWebJobsStorage")
def fail_poisoned_job(message: func.QueueMessage) -> None:
    worker.fail_poisoned(services(), message.get_body(), message_id=message.id or "",
                         dequeue_count=message.dequeue_count or 1)


@app.route(route="backups", methods=["POST"], auth_level=FUNCTION)
def start_backup(req: func.HttpRequest) -> func.HttpResponse:
    return api.start_backup(req, services())


@app.route(route="backups", methods=["GET"], auth_level=FUNCTION)
def list_backups(req: func.HttpRequest) -> func.HttpResponse:
    return api.list_backups(req, services())


@app.route(route="backups/{backupId}", methods=["GET"], auth_level=FUNCTION)
def get_backup(req: func.HttpRequest) -> func.HttpResponse:
    return api.get_backup(req, services())


@app.route(route="backups/{backupId}/verify", methods=["POST"], auth_level=FUNCTION)
def verify_backup(req: func.HttpRequest) -> func.HttpResponse:
    return api.verify_backup(req, services())


@app.route(route="verifications/{verificationId}", methods=["GET"], auth_level=FUNCTION)
def get_verification(req: func.HttpRequest) -> func.HttpResponse:
    return api.get_verification(req, services())


@app.route(route="backup-configuration", methods=["GET"], auth_level=FUNCTION)
def get_configuration(req: func.HttpRequest) -> func.HttpResponse:
    return api.get_configuration(req, services())


@app.route(route="maintenance", methods=["PUT"], auth_level=FUNCTION)
def open_maintenance(req: func.HttpRequest) -> func.HttpResponse:
    return api.open_maintenance(req, services())


@app.route(route="maintenance", methods=["DELETE"], auth_level=FUNCTION)
def close_maintenance(req: func.HttpRequest) -> func.HttpResponse:
    return api.close_maintenance(req, services())


@app.route(route="maintenance", methods=["GET"], auth_level=FUNCTION)
def get_maintenance(req: func.HttpRequest) -> func.HttpResponse:
    return api.get_maintenance(req, services())


@app.route(route="prune", methods=["POST"], auth_level=FUNCTION)
def prune(req: func.HttpRequest) -> func.HttpResponse:
    return api.prune(req, services())


# The fleet: every stamp's routes under stamps/{stampId}; the ones above are stamp default.
@app.route(route="stamps", methods=["GET"], auth_level=FUNCTION)
def list_stamps(req: func.HttpRequest) -> func.HttpResponse:
    return api.list_stamps(req, services())


@app.route(route="stamps/{stampId}/backups", methods=["POST"], auth_level=FUNCTION)
def start_stamp_backup(req: func.HttpRequest) -> func.HttpResponse:
    return api.in_stamp(api.start_backup, req, services())


@app.route(route="stamps/{stampId}/backups", methods=["GET"], auth_level=FUNCTION)
def list_stamp_backups(req: func.HttpRequest) -> func.HttpResponse:
    return api.in_stamp(api.list_backups, req, services())


@app.route(route="stamps/{stampId}/backups/{backupId}", methods=["GET"], auth_level=FUNCTION)
def get_stamp_backup(req: func.HttpRequest) -> func.HttpResponse:
    return api.in_stamp(api.get_backup, req, services())


@app.route(route="stamps/{stampId}/backups/{backupId}/verify", methods=["POST"],
           auth_level=FUNCTION)
def verify_stamp_backup(req: func.HttpRequest) -> func.HttpResponse:
    return api.in_stamp(api.verify_backup, req, services())


@app.route(route="stamps/{stampId}/verifications/{verificationId}", methods=["GET"],
           auth_level=FUNCTION)
def get_stamp_verification(req: func.HttpRequest) -> func.HttpResponse:
    return api.in_stamp(api.get_verification, req, services())


@app.route(route="stamps/{stampId}/backup-configuration", methods=["GET"], auth_level=FUNCTION)
def get_stamp_configuration(req: func.HttpRequest) -> func.HttpResponse:
    return api.in_stamp(api.get_configuration, req, services())


@app.route(route="stamps/{stampId}/maintenance", methods=["PUT"], auth_level=FUNCTION)
def open_stamp_maintenance(req: func.HttpRequest) -> func.HttpResponse:
    return api.in_stamp(api.open_maintenance, req, services())


@app.route(route="stamps/{stampId}/maintenance", methods=["DELETE"], auth_level=FUNCTION)
def close_stamp_maintenance(req: func.HttpRequest) -> func.HttpResponse:
    return api.in_stamp(api.close_maintenance, req, services())


@app.route(route="stamps/{stampId}/maintenance", methods=["GET"], auth_level=FUNCTION)
def get_stamp_maintenance(req: func.HttpRequest) -> func.HttpResponse:
    return api.in_stamp(api.get_maintenance, req, services())


@app.route(route="stamps/{stampId}/prune", methods=["POST"], auth_level=FUNCTION)
def prune_stamp(req: func.HttpRequest) -> func.HttpResponse:
    return api.in_stamp(api.prune, req, services())


@app.route(route="openapi.json", methods=["GET"], auth_level=FUNCTION)
def get_openapi(req: func.HttpRequest) -> func.HttpResponse:
    return openapi.get_openapi(req)
