"""A stand-in for the Azure Functions host, at its protocol boundary with the language worker.

The Functions host (.NET) cannot run here; the Python worker can. This plays the host's
side of the worker protocol, as thinly as the real worker allows, and no more: it starts
the worker as the host does, indexes the app through it, validates what the worker
returns, loads every function, and turns the outside world into invocations — HTTP
requests through a small front end on 127.0.0.1, queue messages from Azurite, timer
ticks on request. It knows nothing of this app: whatever ``function_app.py`` defines is
indexed, routed and listened to.

Every emulated rule names, in a comment, the host source it follows
(Azure/azure-functions-host, and the storage extension in Azure/azure-sdk-for-net).
What is not emulated: scale, retries policies, shared memory, output bindings other
than HTTP ``$return``, blob/other triggers (a function using one is reported in error).

Use::

    with FunctionsHost(app_root, settings) as host:   # started, functions loaded
        host.errors                # {function name: why the host would not run it}
        host.url("/api/backups"), host.function_key
        host.fire_timer("scheduled_backup", past_due=True)
        host.logs                  # every RpcLog the worker sent
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import http.server
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from tests.worker_host import ROOT, ensure_worker_venv

WORKER_VENV = Path(os.environ.get("WORKER_VENV", ROOT / ".venv-worker"))
ensure_worker_venv()
sys.path.insert(0, str(WORKER_VENV / "rpc"))  # the stubs scripts/worker-venv.sh generated
from azfrpc import FunctionRpc_pb2 as rpc  # noqa: E402
from azfrpc import FunctionRpc_pb2_grpc as rpc_grpc  # noqa: E402
from azfrpc.identity import ClaimsIdentityRpc_pb2 as claims_rpc  # noqa: E402
from azfrpc.shared import NullableTypes_pb2 as nullable  # noqa: E402

SHELL = Path(__file__).with_name("shell.py")
HOST_VERSION = "4.1040.0.0"
START_TIMEOUT = 60.0
# Utility.cs: FunctionNameValidationRegex, BindingNameValidationRegex.
FUNCTION_NAME = re.compile(r"^[a-z][a-z0-9_\-]{0,127}$", re.IGNORECASE)
BINDING_NAME = re.compile(r"^([a-zA-Z][a-zA-Z0-9]{0,127}|\$return)$")
# SecurityConstants.cs: the claims of a request authenticated with a key.
CLAIMS = "http://schemas.microsoft.com/2017/07/functions/claims/"
# QueueClientExtensions.IsValidQueueName (storage extension): 3-63, lower case, digits, '-'.
QUEUE_NAME = re.compile(r"^(?=.{3,63}$)[a-z0-9](?!.*--)[a-z0-9-]*[a-z0-9]$")


@dataclass
class Function:
    """One function as the host holds it after validation."""

    function_id: str
    name: str
    bindings: list[dict[str, Any]]
    trigger: dict[str, Any]
    resolved: dict[str, str] = field(default_factory=dict)  # %SETTING% values, connection


@dataclass
class Route:
    function: Function
    template: str
    pattern: re.Pattern[str]
    methods: frozenset[str] | None
    precedence: tuple[int, ...]


class FunctionsHost:
    """The host stand-in for one app folder and one set of app settings."""

    def __init__(self, app_root: Path, settings: Mapping[str, str],
                 worker_python: Path = WORKER_VENV / "bin" / "python") -> None:
        self.app_root = app_root
        self.settings = dict(settings)
        self.worker_python = worker_python
        self.host_json = self._host_json()
        self.functions: dict[str, Function] = {}
        self.errors: dict[str, str] = {}
        self.logs: list[rpc.RpcLog] = []
        #: What the host would log as failed: invocations of non-HTTP functions (the
        #: "Executed 'Functions.x' (Failed)" lines) and listener errors.
        self.failures: list[str] = []
        self.http_requests = 0  # answered by the front end, whatever the status
        self.http_statuses: Counter[int] = Counter()
        self.invocations: Counter[str] = Counter()  # by function name
        self.worker_stderr = ""
        self.function_key = base64.urlsafe_b64encode(os.urandom(30)).decode()
        self.master_key = base64.urlsafe_b64encode(os.urandom(30)).decode()
        self._outbound: Any = None
        self._pending: dict[tuple[str, str], futures.Future[Any]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._routes: list[Route] = []
        self._last_tick: dict[str, dt.datetime] = {}
        self.running: set[str] = set()  # invocation ids in flight

    # --- configuration ------------------------------------------------------------------

    def _host_json(self) -> dict[str, Any]:
        """host.json, with the app settings ``AzureFunctionsJobHost__a__b`` overriding
        ``a.b`` (ScriptHostBuilderExtensions.cs: AddEnvironmentVariables with that prefix)."""
        data = json.loads((self.app_root / "host.json").read_text())
        for name, value in self.settings.items():
            if name.startswith("AzureFunctionsJobHost__"):
                *path, leaf = name.removeprefix("AzureFunctionsJobHost__").split("__")
                node = data
                for part in path:
                    node = node.setdefault(part, {})
                node[leaf] = value
        return data

    def _extension(self, name: str) -> dict[str, Any]:
        return dict(self.host_json.get("extensions", {}).get(name, {}))

    def resolve(self, text: str) -> str:
        """NameResolverExtensions.cs ResolveWholeString: every %NAME% is an app setting."""
        out, i = [], 0
        while (start := text.find("%", i)) >= 0:
            end = text.find("%", start + 1)
            if end < 0:
                raise ValueError(f"The '%' at position {start} does not have a closing '%'")
            name = text[start + 1:end]
            if name not in self.settings:
                raise ValueError(f"'%{name}%' does not resolve to a value.")
            out += [text[i:start], self.settings[name]]
            i = end + 1
        return "".join([*out, text[i:]])

    def connection_string(self, name: str) -> str:
        """StorageClientProvider.cs Get: the setting ``AzureWebJobs<name>`` or ``<name>``
        (IConfigurationExtensions.GetWebJobsConnectionStringSection), default Storage."""
        name = self.resolve(name or "Storage")
        for candidate in (f"AzureWebJobs{name}", name):
            if self.settings.get(candidate, "").strip():
                return self.settings[candidate]
        if any(key.startswith(f"{name}__") for key in self.settings):
            raise ValueError(f"'{name}' is an identity-based connection, which this stand-in "
                             "does not emulate.")
        raise ValueError(f"Storage account connection string 'AzureWebJobs{name}' does not "
                         "exist. Make sure that it is a defined App Setting.")

    # --- the worker process and its stream --------------------------------------------------

    def start(self) -> FunctionsHost:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=[
            ("grpc.max_receive_message_length", 2**31 - 1),
            ("grpc.max_send_message_length", 2**31 - 1)])
        rpc_grpc.add_FunctionRpcServicer_to_server(_Servicer(self), server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self._server = server
        worker_id, request_id = str(uuid.uuid4()), str(uuid.uuid4())
        started = self._expect("start_stream", "")
        # RpcWorkerContext.cs GetFormattedArguments; RpcWorkerProcess.cs: the script root
        # as working directory, app settings as environment, plus the worker/app folders.
        uri = f"http://127.0.0.1:{port}/"
        args = ["--host", "127.0.0.1", "--port", str(port), "--workerId", worker_id,
                "--requestId", request_id, "--grpcMaxMessageLength", str(2**31 - 1),
                "--functions-uri", uri, "--functions-worker-id", worker_id,
                "--functions-request-id", request_id,
                "--functions-grpc-max-message-length", str(2**31 - 1)]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **self.settings,
               "FUNCTIONS_WORKER_DIRECTORY": str(SHELL.parent),
               "FUNCTIONS_APPLICATION_DIRECTORY": str(self.app_root),
               "AzureWebJobsScriptRoot": str(self.app_root),
               "FUNCTIONS_WORKER_RUNTIME_VERSION": _worker_version(self.worker_python),
               "PYTHONPATH": str(WORKER_VENV / "rpc")}
        fd, self._stderr_name = tempfile.mkstemp(prefix="functions-worker-", suffix=".log")
        self._stderr = os.fdopen(fd, "w+b")
        self.process = subprocess.Popen(
            [str(self.worker_python), str(SHELL), *args], cwd=self.app_root, env=env,
            stdin=subprocess.DEVNULL, stdout=self._stderr, stderr=self._stderr,
            start_new_session=True)
        try:
            self._wait(started, "StartStream")
            self._initialize()
            self._index()
            self._load()
            self._serve_http()
            for function in self.functions.values():
                if function.trigger["type"].lower() == "queuetrigger":
                    self._spawn(self._listen, function)
        except BaseException:
            self.stop()
            raise
        return self

    def _initialize(self) -> None:
        # GrpcWorkerChannel.cs SendWorkerInitRequest / GetWorkerInitRequest.
        init = rpc.WorkerInitRequest(host_version=HOST_VERSION,
                                     worker_directory=str(SHELL.parent),
                                     function_app_directory=str(self.app_root))
        init.capabilities["MultiStream"] = "10"
        answer = self._call("worker_init_response", "", worker_init_request=init)
        # WorkerInitResponse: a failed result fails the worker (HandleWorkerInitError).
        _raise_if_failed(answer.result, "WorkerInitRequest")
        self.capabilities = dict(answer.capabilities)

    def _index(self) -> None:
        """GrpcWorkerChannel.cs SendFunctionMetadataRequest / ProcessFunctionMetadataResponses,
        then WorkerFunctionMetadataProvider.cs ValidateMetadata: a function that fails
        validation is in error and is not run; the others are."""
        answer = self._call("function_metadata_response", "", functions_metadata_request=(
            rpc.FunctionsMetadataRequest(function_app_directory=str(self.app_root))))
        _raise_if_failed(answer.result, "FunctionsMetadataRequest")
        if answer.use_default_metadata_indexing:
            raise RuntimeError("the worker asked for host indexing (function.json): not a v2 app")
        for meta in answer.function_metadata_results:
            try:
                if meta.HasField("status"):  # an unset status is no failure (C#: null)
                    _raise_if_failed(meta.status, f"indexing {meta.name}")
                self.functions[meta.name] = self._validate(meta)
            except (ValueError, RuntimeError) as exc:
                self.errors[meta.name] = f"The '{meta.name}' function is in error: {exc}"

    def _validate(self, meta: Any) -> Function:
        if not FUNCTION_NAME.match(meta.name) or meta.name.lower() == "host":  # ValidateName
            raise ValueError(f"'{meta.name}' is not a valid function name.")
        bindings, names = [], set()
        for raw in meta.raw_bindings:  # ValidateBindings
            binding = json.loads(raw)
            name = binding.get("name")
            if name is None or not BINDING_NAME.match(name):  # Utility.cs ValidateBinding
                raise ValueError(f"The binding name {name} is invalid. Please assign a valid "
                                 "name to the binding.")
            if name == "$return" and binding.get("direction", "").lower() != "out":
                raise ValueError("$return bindings must specify a direction of 'out'.")
            if name.lower() in names:
                raise ValueError(f"Multiple bindings with name '{name}' discovered. Binding "
                                 "names must be unique.")
            names.add(name.lower())
            bindings.append(binding)
        if not bindings:
            raise ValueError("At least one binding must be declared.")
        # BindingMetadata.IsTrigger: the type ends with "Trigger";
        # FunctionDescriptorProvider.cs: exactly one trigger.
        triggers = [b for b in bindings if b["type"].lower().endswith("trigger")]
        if len(triggers) > 1:
            raise ValueError("Multiple trigger bindings defined. A function can only have a "
                             "single trigger binding.")
        if not triggers:
            raise ValueError("No trigger binding specified. A function must have a trigger "
                             "input binding.")
        function = Function(meta.function_id, meta.name, bindings, triggers[0])
        self._check_trigger(function)
        return function

    def _check_trigger(self, function: Function) -> None:
        """What each extension checks when the host indexes the function (the trigger
        attribute binding providers); the resolved values are kept for the listeners."""
        trigger = function.trigger
        kind = trigger["type"].lower()
        if kind == "httptrigger":
            for binding in function.bindings:
                if binding is not trigger and binding["type"].lower() != "http":
                    raise ValueError(f"{binding['type']} bindings are not emulated.")
        elif kind == "queuetrigger":
            # QueueTriggerAttributeBindingProvider: %..% in the queue name, then its rules.
            queue = self.resolve(trigger["queueName"]).lower()
            if not QUEUE_NAME.match(queue):
                raise ValueError(f"The dash (-) character may not be the first or last letter "
                                 f"and queue names must be 3-63 lower-case letters, digits or "
                                 f"dashes: '{queue}'.")
            function.resolved = {"queue": queue,
                                 "connection": self.connection_string(trigger.get("connection",
                                                                                  ""))}
        elif kind == "timertrigger":
            # TimerTriggerAttributeBindingProvider / TimerSchedule.Create: %..% resolved,
            # then a CRON expression of 5 or 6 fields, or a TimeSpan.
            schedule = self.resolve(trigger["schedule"])
            if len(schedule.split()) not in (5, 6) and not re.fullmatch(r"\d+:\d\d:\d\d",
                                                                          schedule):
                raise ValueError(f"The schedule expression '{schedule}' was not recognized as "
                                 "a valid cron expression or timespan string.")
            function.resolved = {"schedule": schedule}
        else:
            raise ValueError(f"{trigger['type']} is not emulated by the host stand-in.")

    def _load(self) -> None:
        """GrpcWorkerChannel.cs SendFunctionLoadRequests / GetFunctionLoadRequest / LoadResponse:
        one request per function; a failed load keeps the function from running."""
        pending = {}
        for function in self.functions.values():
            request = rpc.FunctionLoadRequest(function_id=function.function_id, metadata=(
                rpc.RpcFunctionMetadata(name=function.name, directory=str(self.app_root),
                                        script_file="function_app.py")))
            for binding in function.bindings:
                request.metadata.bindings[binding["name"]].CopyFrom(rpc.BindingInfo(
                    type=binding["type"], direction=_direction(binding)))
            pending[function.name] = self._expect("function_load_response", function.function_id)
            self._send(function_load_request=request)
        for name, waiting in pending.items():
            answer = self._wait(waiting, f"FunctionLoadResponse of {name}")
            try:
                _raise_if_failed(answer.result, f"loading {name}")
            except RuntimeError as exc:
                self.errors[name] = f"The '{name}' function is in error: {exc}"
                del self.functions[name]

    def invoke(self, function: Function, inputs: Mapping[str, Any],
               metadata: Mapping[str, Any] | None = None, timeout: float | None = None) -> Any:
        """ScriptInvocationContextExtensions.cs ToRpcInvocationRequest: the trigger value as
        input data, binding data as trigger metadata (null values skipped). Returns the
        InvocationResponse; functionTimeout (host.json) bounds the wait."""
        invocation_id = str(uuid.uuid4())
        request = rpc.InvocationRequest(function_id=function.function_id,
                                        invocation_id=invocation_id)
        request.trace_context.trace_parent = f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-00"
        for name, value in inputs.items():
            request.input_data.append(rpc.ParameterBinding(name=name, data=value))
        for name, value in (metadata or {}).items():
            if value is not None:
                request.trigger_metadata[name].CopyFrom(value)
        waiting = self._expect("invocation_response", invocation_id)
        self.running.add(invocation_id)
        self.invocations[function.name] += 1
        try:
            self._send(invocation_request=request)
            return self._wait(waiting, f"invocation of {function.name}",
                              timeout or _timespan(self.host_json.get("functionTimeout",
                                                                      "00:30:00")))
        finally:
            self.running.discard(invocation_id)

    # --- plumbing -------------------------------------------------------------------------

    def _send(self, **content: Any) -> None:
        self._outbound.put(rpc.StreamingMessage(request_id=str(uuid.uuid4()), **content))

    def _expect(self, kind: str, key: str) -> futures.Future[Any]:
        waiting: futures.Future[Any] = futures.Future()
        with self._lock:
            self._pending[(kind, key)] = waiting
        return waiting

    def _call(self, answer_kind: str, key: str, **content: Any) -> Any:
        waiting = self._expect(answer_kind, key)
        self._send(**content)
        return self._wait(waiting, answer_kind)

    def _wait(self, waiting: futures.Future[Any], what: str, timeout: float = START_TIMEOUT
              ) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(futures.TimeoutError):
                return waiting.result(timeout=0.2)
            if self.process.poll() is not None:
                raise RuntimeError(f"the worker exited ({self.process.returncode}) waiting for "
                                   f"{what}:\n{self.worker_output()}")
        raise TimeoutError(f"no {what} within {timeout:.0f} s:\n{self.worker_output()}")

    def received(self, message: Any) -> None:
        """Every message of the worker. GrpcWorkerChannel.cs Log / SystemLog: an RpcLog is
        kept (the tests read them all)."""
        kind = message.WhichOneof("content")
        if kind == "rpc_log":
            self.logs.append(message.rpc_log)
            return
        content = getattr(message, kind)
        key = getattr(content, "function_id", "") if kind == "function_load_response" else (
            getattr(content, "invocation_id", "") if kind == "invocation_response" else "")
        with self._lock:
            waiting = self._pending.pop((kind, key), None)
        if waiting is not None:
            waiting.set_result(content)

    def worker_output(self) -> str:
        with contextlib.suppress(OSError, ValueError):
            self._stderr.flush()
            return Path(self._stderr_name).read_text(errors="replace")[-6000:]
        return ""

    def _spawn(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        """Stop listening and serving, close the stream, end the worker (its group)."""
        self._stop.set()
        if getattr(self, "_http", None) is not None:
            self._http.shutdown()
            self._http.server_close()
        for thread in self._threads:
            thread.join(timeout=15)
        if self._outbound is not None:
            self._outbound.put(None)
        if getattr(self, "process", None) is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        if getattr(self, "_server", None) is not None:
            self._server.stop(grace=1).wait()
        if getattr(self, "_stderr", None) is not None:
            self.worker_stderr = self.worker_output()
            self._stderr.close()
            Path(self._stderr_name).unlink(missing_ok=True)

    def summary(self) -> str:
        """What this host exercised, in a few lines (the suite prints them at the end)."""
        kinds = Counter(f.trigger["type"] for f in self.functions.values())
        by_kind: Counter[str] = Counter()
        for name, count in self.invocations.items():
            function = self.functions.get(name)
            by_kind[function.trigger["type"] if function else "?"] += count
        categories = Counter(log.category for log in self.logs)
        lines = [
            f"functions loaded {len(self.functions)} ({_counts(kinds)}); in error "
            f"{len(self.errors)}{': ' + '; '.join(self.errors.values()) if self.errors else ''}",
            f"invocations {sum(by_kind.values())} ({_counts(by_kind)}); HTTP requests "
            f"{self.http_requests} ({_counts(self.http_statuses)})",
            f"RpcLog records {len(self.logs)} ({_counts(categories)})",
            f"host-side failures {len(self.failures)}" + (
                ": " + "; ".join(self.failures[:5]) if self.failures else ""),
        ]
        return "\n".join(lines)

    def __enter__(self) -> FunctionsHost:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- HTTP -----------------------------------------------------------------------------

    def _serve_http(self) -> None:
        """WebScriptHostHttpRoutesManager.cs InitializeHttpFunctionRoutes: each HTTP function's
        route (its name when empty) under host.json's routePrefix, with its methods as a
        constraint."""
        prefix = self._extension("http").get("routePrefix", "api").strip("/")
        for function in self.functions.values():
            trigger = function.trigger
            if trigger["type"].lower() != "httptrigger":
                continue
            template = "/".join(p for p in (prefix, trigger.get("route") or function.name) if p)
            methods = trigger.get("methods")
            pattern, precedence = _compile(template)
            self._routes.append(Route(function, template, pattern, frozenset(
                m.upper() for m in methods) if methods else None, precedence))
        # ASP.NET routing tries literal segments before parameters.
        self._routes.sort(key=lambda r: r.precedence, reverse=True)
        host = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def __getattr__(self, name: str) -> Any:
                if name.startswith("do_"):
                    return lambda: host._http_request(self)
                raise AttributeError(name)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._http.host_stats = self.http_statuses  # type: ignore[attr-defined]
        self._http.daemon_threads = True
        self._spawn(self._http.serve_forever)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._http.server_address[1]}"

    def url(self, path: str) -> str:
        return self.base_url + path

    @property
    def routes(self) -> list[tuple[str, str | None, str]]:
        """(route template, method or None for any, function name), as mapped."""
        return [(r.template, m, r.function.name) for r in self._routes
                for m in sorted(r.methods or [None])]  # type: ignore[type-var]

    def _http_request(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        self.http_requests += 1
        parts = urllib.parse.urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        path = urllib.parse.unquote(parts.path).strip("/")
        for route in self._routes:
            match = route.pattern.fullmatch(path)
            if match and (route.methods is None or handler.command in route.methods):
                break
        else:
            return _reply(handler, 404, {}, b"")  # no route: the host's 404, no body
        query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        identity = self._authenticate(route.function, handler, dict(query))
        if identity is None:
            return _reply(handler, 401, {}, b"")  # FunctionInvocationMiddleware: 401, no body
        http_data = self._rpc_http(handler, parts, query, match.groupdict(), body)
        if identity.claims:
            http_data.identities.append(identity)
        response = self.invoke(route.function, {route.function.trigger["name"]: rpc.TypedData(
            http=http_data)})
        if response.result.status != rpc.StatusResult.Success:
            return _reply(handler, 500, {}, b"")  # a failed invocation: 500, no body
        returned = response.return_value.http
        headers = dict(returned.headers)
        _reply(handler, int(returned.status_code or 200), headers, _body(returned.body))

    def _authenticate(self, function: Function, handler: Any, query: dict[str, str]
                      ) -> Any | None:
        """The caller's identity, or None for a 401. AuthenticationLevelHandler.cs: the key
        in the x-functions-key header, else ?code=; the function key ("default") gives the
        Function level, the master key ("_master") Admin; a function-level route needs
        one of them, an admin-level route the master key. The identity (scheme
        WebJobsAuthLevel, with the level, invoke and key-name claims) is what ToRpcHttp
        passes on as RpcHttp.identities."""
        key = handler.headers.get("x-functions-key") or query.get("code")
        granted = {self.function_key: ("Function", "default"),
                   self.master_key: ("Admin", "_master")}.get(key or "")
        identity = claims_rpc.RpcClaimsIdentity(
            authentication_type=nullable.NullableString(value="WebJobsAuthLevel"),
            name_claim_type=nullable.NullableString(
                value="http://schemas.xmlsoap.org/ws/2005/05/identity/claims/name"),
            role_claim_type=nullable.NullableString(
                value="http://schemas.microsoft.com/ws/2008/06/identity/claims/role"))
        if granted is not None:
            for claim, value in (("authlevel", granted[0]), ("invoke", "true"),
                                 ("keyid", granted[1])):
                identity.claims.append(claims_rpc.RpcClaim(type=CLAIMS + claim, value=value))
        level = str(function.trigger.get("authLevel", "function")).lower()
        if level == "anonymous" or (granted is not None and (
                level != "admin" or granted[0] == "Admin")):
            return identity
        return None

    def _rpc_http(self, handler: Any, parts: urllib.parse.SplitResult,
                  query: list[tuple[str, str]], params: Mapping[str, str | None], body: bytes
                  ) -> Any:
        """GrpcMessageConversionExtensions.cs ToRpcHttp, for a worker that declares
        RawHttpBodyBytes and RpcHttpBodyOnly (the Python worker does) and not
        UseNullableValueDictionaryForHttp: headers lower-cased, empty query values left
        out, route values as params, the body as bytes when there is one."""
        http_data = rpc.RpcHttp(method=handler.command, url=(
            f"http://{handler.headers.get('Host', '127.0.0.1')}{parts.path}"
            f"{'?' + parts.query if parts.query else ''}"))
        for name, value in query:
            if value:
                http_data.query[name] = value
        for name in set(handler.headers.keys()):
            http_data.headers[name.lower()] = ",".join(handler.headers.get_all(name))
        for name, value in params.items():
            if value is not None:
                http_data.params[name] = value
        if body:
            http_data.body.CopyFrom(rpc.TypedData(bytes=body))
        return http_data

    # --- queues ---------------------------------------------------------------------------

    def _listen(self, function: Function) -> None:
        """QueueListener / QueueProcessor (storage extension): poll with a back-off from
        100 ms to maxPollingInterval; per message: base64-decode (messageEncoding), invoke
        with the trigger metadata, delete on success; on failure hand it back
        (visibilityTimeout) or, at maxDequeueCount, copy it to <queue>-poison as a new
        message and delete it. The message stays invisible while the function runs
        (renewal is not emulated: no invocation here runs 10 minutes)."""
        from azure.storage.queue import QueueClient

        options = self._extension("queues")
        max_dequeue = int(options.get("maxDequeueCount", 5))
        visibility = _timespan(options.get("visibilityTimeout", "00:00:00"))
        max_interval = _timespan(options.get("maxPollingInterval", "00:01:00"))
        batch = int(options.get("batchSize", 16))
        base64_encoded = str(options.get("messageEncoding", "base64")).lower() == "base64"
        connection, name = function.resolved["connection"], function.resolved["queue"]
        queue = QueueClient.from_connection_string(connection, name)
        # QueueListenerFactory.CreatePoisonQueueReference: none for a poison queue itself.
        poison = None if name.endswith("-poison") else QueueClient.from_connection_string(
            connection, f"{name}-poison")
        interval = 0.1
        while not self._stop.wait(interval):
            try:
                messages = list(queue.receive_messages(messages_per_page=batch,
                                                       max_messages=batch,
                                                       visibility_timeout=600))
                for message in messages:
                    self._process(function, queue, poison, message, max_dequeue, visibility,
                                  base64_encoded)
            except Exception as exc:  # a queue not created yet is only empty
                messages = []
                if "QueueNotFound" not in str(exc):
                    self.failures.append(f"listener of {function.name}: {exc!r}")
            interval = 0.1 if messages else min(interval * 2, max_interval)

    def _process(self, function: Function, queue: Any, poison: Any, message: Any,
                 max_dequeue: int, visibility: float, base64_encoded: bool) -> None:
        if message.dequeue_count > max_dequeue:  # QueueProcessor.BeginProcessingMessageAsync
            self._poison(queue, poison, message)
            return
        raw = base64.b64decode(message.content) if base64_encoded else message.content.encode()
        try:
            value = rpc.TypedData(string=raw.decode("utf-8"))
        except UnicodeDecodeError:
            value = rpc.TypedData(bytes=raw)
        # QueueTriggerBinding.cs CreateBindingData; GrpcMessageConversionExtensions ToRpc:
        # strings as strings, the rest as JSON (Newtonsoft's DateTimeOffset format).
        metadata = {"QueueTrigger": value if value.HasField("string") else None,
                    "DequeueCount": rpc.TypedData(json=str(message.dequeue_count)),
                    "Id": rpc.TypedData(string=message.id),
                    "PopReceipt": rpc.TypedData(string=message.pop_receipt)}
        for key, when in (("InsertionTime", message.inserted_on),
                          ("ExpirationTime", message.expires_on),
                          ("NextVisibleTime", message.next_visible_on)):
            if when is not None:
                metadata[key] = rpc.TypedData(json=json.dumps(when.isoformat()))
        response = self.invoke(function, {function.trigger["name"]: value}, metadata)
        if response.result.status == rpc.StatusResult.Success:  # CompleteProcessingMessageAsync
            queue.delete_message(message.id, message.pop_receipt)
            return
        self.failures.append(f"{function.name} (message {message.id}, delivery "
                             f"{message.dequeue_count}): {response.result.exception.message}")
        if poison is None:
            pass  # no poison queue: left invisible, not handed back (no fast loop)
        elif message.dequeue_count >= max_dequeue:
            self._poison(queue, poison, message)
        else:
            queue.update_message(message.id, message.pop_receipt, visibility_timeout=int(
                visibility))

    @staticmethod
    def _poison(queue: Any, poison: Any, message: Any) -> None:
        """QueueProcessor.CopyMessageToPoisonQueueAsync: the same text, a new message."""
        with contextlib.suppress(Exception):
            poison.create_queue()
        poison.send_message(message.content)
        queue.delete_message(message.id, message.pop_receipt)

    # --- timers ---------------------------------------------------------------------------

    def fire_timer(self, name: str, past_due: bool = False) -> Any:
        """What TimerListener does when a schedule occurrence is due: invoke with TimerInfo
        as JSON (TimerInfo: Schedule, ScheduleStatus, IsPastDue). ``past_due`` is what the
        schedule monitor (useMonitor) reports when an occurrence was missed, e.g. while
        the app was stopped."""
        function = self.functions[name]
        now = dt.datetime.now(dt.UTC)
        last = self._last_tick.get(name, dt.datetime(1, 1, 1, tzinfo=dt.UTC))
        self._last_tick[name] = now
        status = ({"Last": last.isoformat(), "Next": now.isoformat(),
                   "LastUpdated": now.isoformat()}
                  if function.trigger.get("useMonitor", True) else None)
        info = {"Schedule": {"AdjustForDST": True}, "ScheduleStatus": status,
                "IsPastDue": past_due}
        response = self.invoke(function, {function.trigger["name"]: rpc.TypedData(
            json=json.dumps(info))})
        if response.result.status != rpc.StatusResult.Success:
            self.failures.append(f"{name}: {response.result.exception.message}")
        return response


class _Servicer(rpc_grpc.FunctionRpcServicer):
    """The host's end of EventStream: one stream per worker (GrpcWorkerChannel)."""

    def __init__(self, host: FunctionsHost) -> None:
        self.host = host

    def EventStream(self, requests: Iterator[Any], context: Any) -> Iterator[Any]:
        import queue

        outbound: queue.Queue[Any] = queue.Queue()
        self.host._outbound = outbound

        def read() -> None:
            with contextlib.suppress(grpc.RpcError):
                for message in requests:
                    if message.WhichOneof("content") == "start_stream":
                        with self.host._lock:
                            waiting = self.host._pending.pop(("start_stream", ""), None)
                        if waiting is not None:
                            waiting.set_result(message.start_stream)
                    else:
                        self.host.received(message)
            outbound.put(None)

        threading.Thread(target=read, name="host-grpc-read", daemon=True).start()
        while (message := outbound.get()) is not None:
            yield message


def _worker_version(python: Path) -> str:
    """major.minor of the worker's interpreter (its venv's pyvenv.cfg): what the host sets
    as FUNCTIONS_WORKER_RUNTIME_VERSION (RpcWorkerProcess.cs)."""
    config = (python.parent.parent / "pyvenv.cfg").read_text()
    match = re.search(r"^version(?:_info)?\s*=\s*(\d+\.\d+)", config, re.M)
    return match.group(1) if match else "3.13"


def _counts(counter: Mapping[Any, int]) -> str:
    return ", ".join(f"{key} {n}" for key, n in sorted(counter.items(), key=lambda i: -i[1]))


def _raise_if_failed(result: Any, what: str) -> None:
    if result.status == rpc.StatusResult.Failure:
        exc = result.exception
        raise RuntimeError(f"{what} failed: {exc.message or result.result}")


def _direction(binding: Mapping[str, Any]) -> int:
    return {"in": rpc.BindingInfo.Direction.Value("in"),
            "out": rpc.BindingInfo.Direction.Value("out"),
            "inout": rpc.BindingInfo.Direction.Value("inout")}[
        str(binding.get("direction", "in")).lower()]


def _compile(template: str) -> tuple[re.Pattern[str], tuple[int, ...]]:
    """A route template as a pattern: literal segments, ``{name}`` and ``{name?}``. Route
    constraints and catch-alls are refused (not emulated), so a route using one fails
    here rather than matching what the host would not."""
    pattern, rank = "", []
    for i, segment in enumerate(template.split("/")):
        slash = "/" if i else ""
        if not segment.startswith("{"):
            pattern += slash + re.escape(segment)
            rank.append(2)
            continue
        name = segment.removeprefix("{").removesuffix("}")
        if not re.fullmatch(r"[A-Za-z_]\w*\??", name):
            raise ValueError(f"route segment '{segment}' is not emulated by the host stand-in")
        group = f"(?P<{name.rstrip('?')}>[^/]+)"
        pattern += f"(?:{slash}{group})?" if name.endswith("?") else slash + group
        rank.append(1)
    return re.compile(pattern), tuple(rank)


def _timespan(text: str) -> float:
    """A host.json TimeSpan, ``[d.]hh:mm:ss[.fff]``, in seconds."""
    match = re.fullmatch(r"(?:(\d+)\.)?(\d+):(\d+):(\d+(?:\.\d+)?)", str(text).strip())
    if match is None:
        raise ValueError(f"'{text}' is not a TimeSpan (hh:mm:ss)")
    days, hours, minutes, seconds = match.groups()
    return int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def _body(data: Any) -> bytes:
    kind = data.WhichOneof("data")
    if kind is None:
        return b""
    value = getattr(data, kind)
    return value if isinstance(value, bytes) else str(value).encode()


def _reply(handler: Any, status: int, headers: Mapping[str, str], body: bytes) -> None:
    handler.server.host_stats[status] += 1
    handler.send_response(status)
    for name, value in headers.items():
        if name.lower() not in ("content-length", "transfer-encoding"):
            handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)
