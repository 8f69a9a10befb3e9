"""``GET /api/openapi.json``: the OpenAPI 3.1 document of the HTTP API.

The document is ``shared/infrabackup/app/openapi.json`` (deployed with the package;
``docs/openapi.json`` is a link to it). The suite checks it against the routes the worker
indexes and runs schemathesis against the app through the Functions host stand-in, so a
route without documentation, or an answer the document does not describe, fails a test.
"""

from __future__ import annotations

import json
import urllib.parse
from functools import cache
from pathlib import Path
from typing import Any

import azure.functions as func

from infrabackup.app.http_json import handle, json_response, query

DOCUMENT = Path(__file__).with_name("openapi.json")


@cache
def _document() -> str:
    return DOCUMENT.read_text(encoding="utf-8")


def get_openapi(req: func.HttpRequest) -> func.HttpResponse:
    """The document, its ``servers`` set to the app that answers (scheme and host of the
    request), so that a client can call the routes it lists as they are."""

    def work() -> func.HttpResponse:
        query(req, frozenset())
        document: dict[str, Any] = json.loads(_document())
        parts = urllib.parse.urlsplit(req.url)
        document["servers"] = [{"url": f"{parts.scheme}://{parts.netloc}"}]
        return json_response(200, document)

    return handle(work)
