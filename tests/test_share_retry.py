"""The retry policy of share operations (shared/infrabackup/share/retry.py), on its own."""

from __future__ import annotations

import pytest

from infrabackup.errors import AuthenticationError, CapacityError, ConnectivityError, PathError
from infrabackup.share.retry import RetryPolicy


class Flaky:
    """Fails with ``errors`` in turn, then returns "done"."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"


def policy(slept: list[float], retries: int = 3) -> RetryPolicy:
    return RetryPolicy(retries=retries, backoff=0.5, sleep=slept.append)


def test_connectivity_faults_are_retried_with_exponential_backoff() -> None:
    slept: list[float] = []
    dropped: list[str] = []
    fn = Flaky(ConnectivityError("reset", status="ECONNRESET"),
               ConnectivityError("refused", status="ECONNREFUSED"))
    result = policy(slept).call("listing /", fn, before_retry=lambda e: dropped.append(e.status))
    assert result == "done" and fn.calls == 3
    assert slept == [0.5, 1.0]
    assert dropped == ["ECONNRESET", "ECONNREFUSED"], "the connection is dropped before each"


def test_the_last_fault_is_raised_once_the_retries_are_spent() -> None:
    slept: list[float] = []
    fn = Flaky(*(ConnectivityError(f"try {i}", status=f"E{i}") for i in range(5)))
    with pytest.raises(ConnectivityError) as caught:
        policy(slept, retries=2).call("x", fn)
    assert caught.value.status == "E2" and fn.calls == 3
    assert slept == [0.5, 1.0]


@pytest.mark.parametrize("error", [AuthenticationError("no"), PathError("gone"),
                                   CapacityError("full")], ids=lambda e: type(e).__name__)
def test_permanent_faults_are_never_retried(error: Exception) -> None:
    slept: list[float] = []
    fn = Flaky(error)
    with pytest.raises(type(error)):
        policy(slept).call("x", fn)
    assert fn.calls == 1 and slept == []


def test_other_exceptions_pass_through_untouched() -> None:
    fn = Flaky(KeyError("not a share error"))
    with pytest.raises(KeyError):
        policy([]).call("x", fn)
    assert fn.calls == 1


def test_the_retryable_predicate_decides() -> None:
    slept: list[float] = []
    fn = Flaky(PathError("eventually consistent"))
    retry = RetryPolicy(retries=1, backoff=0.1, retryable=lambda e: isinstance(e, PathError),
                        sleep=slept.append)
    assert retry.call("x", fn) == "done" and slept == [0.1]
