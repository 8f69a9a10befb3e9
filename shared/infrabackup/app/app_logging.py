"""Log levels of the Functions app's process.

The Python worker sets the root logger to INFO and sends every record to the host, which
forwards the app's records to Application Insights. At INFO the Azure SDK's HTTP logging
policy writes two records per storage request (the request and the response, headers
included: most of what the app would log), so the app's own records would drown in
them and in their ingestion cost. The SDK's request logging is kept for warnings and
errors; the app's loggers (``infrabackup.*``) are left as they are.
"""

from __future__ import annotations

import logging

#: Loggers that log every HTTP request at INFO, and the level they are raised to.
QUIET_LOGGERS = {"azure.core.pipeline.policies.http_logging_policy": logging.WARNING}


def quiet_sdk_logging() -> None:
    """Raise the SDK's per-request loggers to WARNING (idempotent; once per process)."""
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
