"""The retry policy of share operations, usable by any share backend (and tested alone).

Modelled on restic's RetryBackend: an operation that is safe to repeat is tried again after
a fault that a retry can cure, with exponential backoff, and every other fault reaches the
caller at once. Which faults qualify is the policy's ``retryable`` predicate (by default:
:class:`~infrabackup.errors.ConnectivityError`, never an authentication, path or capacity
fault); ``before_retry`` lets the backend drop a broken connection first.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from infrabackup.errors import ConnectivityError, InfraBackupError

T = TypeVar("T")
log = logging.getLogger(__name__)


def _connectivity(exc: InfraBackupError) -> bool:
    return isinstance(exc, ConnectivityError)


@dataclass
class RetryPolicy:
    """Up to ``retries`` more attempts, waiting ``backoff`` × 2^(n-1) before the n-th."""

    retries: int = 3
    backoff: float = 0.5
    retryable: Callable[[InfraBackupError], bool] = _connectivity
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        return float(self.backoff * 2 ** (attempt - 1))

    def call(
        self,
        what: str,
        fn: Callable[[], T],
        *,
        before_retry: Callable[[InfraBackupError], None] | None = None,
    ) -> T:
        """``fn()``, tried again while it raises a retryable error and retries are left.

        ``fn`` must be idempotent. The last error is raised unchanged; the ones before it
        are logged (status only: messages may name paths, never secrets).
        """
        attempt = 0
        while True:
            try:
                return fn()
            except InfraBackupError as exc:
                if not self.retryable(exc) or attempt >= self.retries:
                    raise
                attempt += 1
                wait = self.delay(attempt)
                log.warning("%s: %s; retry %d of %d in %.1f s", what, exc.status, attempt,
                            self.retries, wait)
                if before_retry is not None:
                    before_retry(exc)
                self.sleep(wait)
