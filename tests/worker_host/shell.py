"""The worker process: the gRPC shell around the real Python language worker library.

On Python 3.13+ Azure runs the worker library ``azure_functions_runtime`` under a small
"proxy worker" that ships with the host image (azure-functions-python-worker,
``workers/proxy_worker/``), not on PyPI. This is that shell, the thinnest that behaves
as it does; every handler of the protocol is the library's own. Started by
:mod:`tests.worker_host.host` with the host's command line, in the Python 3.13 venv of
``scripts/worker-venv.sh`` (``PYTHONPATH`` holds the generated ``azfrpc`` stubs).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import queue
import sys
import threading
import types
from dataclasses import dataclass, field
from typing import Any

import grpc
from azfrpc import FunctionRpc_pb2, FunctionRpc_pb2_grpc
from azfrpc.shared import NullableTypes_pb2

# The protos object the library is handed (proxy_worker/protos/__init__.py: every message
# of the protocol, and the stub).
protos = types.SimpleNamespace(**{
    name: getattr(module, name) for module in (FunctionRpc_pb2, NullableTypes_pb2,
                                               FunctionRpc_pb2_grpc)
    for name in dir(module) if not name.startswith("_")})
log = logging.getLogger("proxy_worker")
# proxy_worker/logging.py is_system_log_category: these categories are the platform's.
SYSTEM_PREFIXES = ("proxy_worker", "azure_functions_runtime", "azure.functions")
# Requests the library answers: (its coroutine, the StreamingMessage field of the answer).
HANDLERS = {
    "worker_init_request": ("worker_init_request", "worker_init_response"),
    "functions_metadata_request": ("functions_metadata_request", "function_metadata_response"),
    "function_load_request": ("function_load_request", "function_load_response"),
    "invocation_request": ("invocation_request", "invocation_response"),
    "function_environment_reload_request": ("function_environment_reload_request",
                                            "function_environment_reload_response"),
}


@dataclass
class WorkerRequest:  # proxy_worker/dispatcher.py WorkerRequest: what each handler receives
    name: str
    request: Any
    properties: dict[str, Any] = field(default_factory=dict)


class Shell(logging.Handler):
    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__()
        self.args = args
        self.outbound: queue.Queue[Any] = queue.Queue()
        self.library: Any = None

    # proxy_worker/dispatcher.py on_logging: every record of the root logger becomes an
    # RpcLog, with the running invocation's id when there is one.
    def emit(self, record: logging.LogRecord) -> None:
        level = {logging.CRITICAL: protos.RpcLog.Critical, logging.ERROR: protos.RpcLog.Error,
                 logging.WARNING: protos.RpcLog.Warning, logging.INFO: protos.RpcLog.Information,
                 }.get(record.levelno, protos.RpcLog.Debug)
        system = record.name.startswith(SYSTEM_PREFIXES)
        rpc_log = protos.RpcLog(level=level, message=self.format(record), category=record.name,
                                log_category=protos.RpcLog.System if system else protos.RpcLog.User)
        invocation_id = self.library.invocation_id_cv.get() if self.library else None
        if invocation_id:
            rpc_log.invocation_id = invocation_id
        self.outbound.put(protos.StreamingMessage(request_id=self.args.request_id,
                                                  rpc_log=rpc_log))

    async def dispatch(self, message: Any) -> None:
        kind = message.WhichOneof("content")
        if kind == "worker_status_request":
            answer = {"worker_status_response": protos.WorkerStatusResponse()}
        elif kind in HANDLERS:
            handler, answer_field = HANDLERS[kind]
            if kind in ("worker_init_request", "function_environment_reload_request"):
                # dispatcher.py reload_library_worker: a function_app.py is the v2 model,
                # whose library is azure_functions_runtime.
                import azure_functions_runtime

                self.library = azure_functions_runtime
                self.library.start_threadpool_executor()
            properties = {"protos": protos, "host": self.args.host}
            result = await getattr(self.library, handler)(WorkerRequest(kind, message, properties))
            answer = {answer_field: result}
        else:
            log.error("Unknown StreamingMessage content type: %s", kind)
            return
        self.outbound.put(protos.StreamingMessage(request_id=message.request_id, **answer))

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        options = [("grpc.max_receive_message_length", self.args.grpc_max_message_length),
                   ("grpc.max_send_message_length", self.args.grpc_max_message_length)]
        channel = grpc.insecure_channel(f"{self.args.host}:{self.args.port}", options)
        grpc.channel_ready_future(channel).result(timeout=5.0)  # start_worker.py: 5 s
        stub = protos.FunctionRpcStub(channel)
        self.outbound.put(protos.StreamingMessage(
            request_id=self.args.request_id,
            start_stream=protos.StartStream(worker_id=self.args.worker_id)))
        # dispatcher.py dispatch_forever: the root logger goes to the host at INFO (DEBUG
        # with PYTHON_ENABLE_DEBUG_LOGGING), whatever the app's loggers say.
        root = logging.getLogger()
        debug = os.environ.get("PYTHON_ENABLE_DEBUG_LOGGING", "").lower() in ("1", "true")
        root.setLevel(logging.DEBUG if debug else logging.INFO)
        root.addHandler(self)
        closed = loop.create_future()

        def receive() -> None:
            try:
                for message in stub.EventStream(iter(self.outbound.get, None)):
                    loop.call_soon_threadsafe(loop.create_task, self.dispatch(message))
            except grpc.RpcError:
                pass  # the host closed the stream
            finally:
                loop.call_soon_threadsafe(closed.set_result, None)

        threading.Thread(target=receive, name="grpc-receive", daemon=True).start()
        await closed


def parse_args() -> argparse.Namespace:
    # RpcWorkerContext.cs GetFormattedArguments: the host passes both spellings.
    parser = argparse.ArgumentParser(description="Python worker shell")
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workerId", dest="worker_id", required=True)
    parser.add_argument("--requestId", dest="request_id", required=True)
    parser.add_argument("--grpcMaxMessageLength", dest="grpc_max_message_length", type=int,
                        default=2**31 - 1)
    for name in ("uri", "worker-id", "request-id", "grpc-max-message-length"):
        parser.add_argument(f"--functions-{name}")
    return parser.parse_args()


if __name__ == "__main__":
    # proxy_worker/utils/dependency.py prioritize_customer_dependencies: the app's folder
    # (AzureWebJobsScriptRoot) is on sys.path, after the packages.
    sys.path.append(os.environ["AzureWebJobsScriptRoot"])  # noqa: SIM112 - its name
    asyncio.run(Shell(parse_args()).run())
