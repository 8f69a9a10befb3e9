"""JSON over HTTP for the API: request validation and JSON responses.

Every answer is JSON. Errors are ``{"error": {"code", "message"[, "target"]}}``, where
``target`` names the offending field or parameter; failures of the backup service add
the alert's name and remediation. Status codes:

====  ==============================================================================
400   the request is wrong: body too large, not JSON, not an object, an unknown field,
      a field of the wrong type or value, an unknown or bad query parameter, an id
      that is not a GUID (``code``: InvalidRequest, InvalidBackupId)
404   no such backup (NotFound)
409   refused: maintenance window, a backup of the stamp queued or running, the lock
500   the app's own settings are wrong (ConfigurationError, naming the setting), or
      an unexpected error
502   the share or the app's storage failed (the alert says which of the five)
====  ==============================================================================
"""

from __future__ import annotations

import json
import logging
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

import azure.functions as func

from infrabackup.errors import (
    ConfigError,
    InfraBackupError,
    NotFoundError,
    RefusedError,
    ShareError,
)
from infrabackup.inputs import JsonInputError, ascii_int, load_json, quote

log = logging.getLogger("infrabackup.api")

#: The largest request body accepted; the API's bodies are a few dozen bytes.
MAX_BODY_BYTES = 4096
#: The API's bodies are flat objects: deeper nesting is refused before parsing.
MAX_BODY_DEPTH = 8
#: Query parameters every route accepts: the function key may come as ``?code=``.
PLATFORM_PARAMS = frozenset({"code"})


class BadRequest(Exception):
    """The request is wrong (400); ``target`` names the field or parameter."""

    def __init__(self, message: str, target: str | None = None,
                 code: str = "InvalidRequest") -> None:
        super().__init__(message)
        self.message = message
        self.target = target
        self.code = code


def json_response(status: int, data: Any, headers: Mapping[str, str] | None = None
                  ) -> func.HttpResponse:
    return func.HttpResponse(
        json.dumps(data, ensure_ascii=False, indent=2),
        status_code=status,
        headers={"Cache-Control": "no-store", **(headers or {})},
        mimetype="application/json",
        charset="utf-8",
    )


def error_response(status: int, code: str, message: str, **extra: Any) -> func.HttpResponse:
    error = {"code": code, "message": message, **{k: v for k, v in extra.items() if v}}
    return json_response(status, {"error": error})


def failure_response(exc: InfraBackupError) -> func.HttpResponse:
    """The answer for an error of the service raised while serving a valid request."""
    if isinstance(exc, RefusedError):
        return error_response(409, exc.code, exc.message)
    if isinstance(exc, NotFoundError):
        return error_response(404, exc.code, exc.message)
    if isinstance(exc, ConfigError):
        # The request was valid: a ConfigError now is about the app's own settings.
        return error_response(500, exc.code, exc.message, target=exc.setting)
    status = 502 if isinstance(exc, ShareError) else 500
    return error_response(status, exc.code, exc.message, alert=exc.alert.title,
                          remediation=exc.alert.remediation, retryable=exc.retryable)


def handle(work: Callable[[], func.HttpResponse]) -> func.HttpResponse:
    """Run a route's work, answering every exception with a JSON error."""
    try:
        return work()
    except BadRequest as exc:
        return error_response(400, exc.code, exc.message, target=exc.target)
    except InfraBackupError as exc:
        if not isinstance(exc, RefusedError | NotFoundError):
            log.error("%s: %s", exc.code, exc.message)
        return failure_response(exc)
    except Exception:
        log.exception("unexpected error")
        return error_response(500, "InternalError", "Unexpected error; see the function's log.")


# --- requests ----------------------------------------------------------------------------

#: A field's expected JSON type: (python types, the name used in the message).
FieldSpec = tuple[type | tuple[type, ...], str]


def json_body(req: func.HttpRequest, fields: Mapping[str, FieldSpec],
              required: tuple[str, ...] = (), optional_body: bool = False) -> dict[str, Any]:
    """The request's JSON object, checked: size, syntax, known fields and their types."""
    raw = req.get_body() or b""
    if len(raw) > MAX_BODY_BYTES:
        raise BadRequest(f"The request body has {len(raw)} bytes; at most {MAX_BODY_BYTES} "
                         "are accepted.", target="body")
    if not raw.strip():
        if optional_body:
            data: Any = {}
        else:
            raise BadRequest(f"A JSON body is required: {_example(fields, required)}.",
                             target="body")
    else:
        try:
            data = load_json(raw, max_bytes=MAX_BODY_BYTES, max_depth=MAX_BODY_DEPTH)
        except JsonInputError as exc:
            raise BadRequest(f"The request body is not valid UTF-8 JSON: {exc}. Example: "
                             f"{_example(fields, required)}.", target="body") from None
    if not isinstance(data, dict):
        raise BadRequest(f"The request body must be a JSON object. Example: "
                         f"{_example(fields, required)}.", target="body")
    for name in data:
        if name not in fields:
            known = ", ".join(sorted(fields)) or "none"
            raise BadRequest(f"Unknown field {quote(name)}. Known fields: {known}.",
                             target=name[:100])
    for name, (types, type_name) in fields.items():
        value = data.get(name)
        # JSON true/false are Python bools, which are ints too: a number field refuses them.
        wrong_bool = isinstance(value, bool) and bool not in _as_tuple(types)
        if name in data and (not isinstance(value, types) or wrong_bool):
            raise BadRequest(f"Field '{name}' must be {type_name}, not "
                             f"{_json_type(data[name])}.", target=name)
    for name in required:
        if name not in data:
            raise BadRequest(f"Field '{name}' is required. Example: "
                             f"{_example(fields, required)}.", target=name)
    return data


def _as_tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string",
            list: "an array", dict: "an object"}.get(type(value), type(value).__name__)


def _example(fields: Mapping[str, FieldSpec], required: tuple[str, ...]) -> str:
    return json.dumps({name: "..." for name in required}) if required else "{}"


def query(req: func.HttpRequest, allowed: frozenset[str]) -> dict[str, str]:
    """The query parameters, refusing any this route does not know (``code`` aside)."""
    params = dict(req.params)
    for name in params:
        if name not in allowed and name not in PLATFORM_PARAMS:
            known = ", ".join(sorted(allowed)) or "none"
            raise BadRequest(f"Unknown query parameter {quote(name)}. Known: {known}.",
                             target=name[:100])
    return {k: v for k, v in params.items() if k not in PLATFORM_PARAMS}


def int_param(params: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    """A whole-number parameter in ASCII digits within ``low``..``high`` (BadRequest
    otherwise: ``str.isdigit`` would take "²", and ``int()`` "٧", "1_0" or fail past
    4,300 digits)."""
    text = params.get(name)
    if text is None:
        return default
    number = ascii_int(text.strip())
    if number is None or not low <= number <= high:
        raise BadRequest(f"Query parameter '{name}' must be a whole number from {low} to "
                         f"{high}; got {quote(text)}.", target=name)
    return number


def bool_param(params: Mapping[str, str], name: str) -> bool | None:
    text = params.get(name)
    if text is None:
        return None
    lowered = text.strip().lower()
    if lowered not in ("true", "false"):
        raise BadRequest(f"Query parameter '{name}' must be true or false; got {quote(text)}.",
                         target=name)
    return lowered == "true"


def url_for(req: func.HttpRequest, path: str, params: Mapping[str, str] | None = None) -> str:
    """An absolute URL on this app (``path`` from the root). The function key is never
    put in it: callers add their own."""
    parts = urllib.parse.urlsplit(req.url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path,
                                    urllib.parse.urlencode(params or {}), ""))
