"""The worker's flow gate (route and task breakers) and which failures count against them."""

from __future__ import annotations

import asyncio
import urllib.error

import pytest
from hypothesis import given
from hypothesis import strategies as st

from headwater import Retriable
from headwater.runner.errors import TaskFailed, retriable
from headwater.runner.executor import TaskContext, execute
from headwater.runner.flow.breaker import BreakerSpec
from headwater.runner.flow.gate import Gate
from headwater.runner.model.pipeline import Task


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


ROUTE = BreakerSpec(failures=3, cooldown=10.0)


def kinds(gate: Gate) -> list[str]:
    return [change.kind for change in gate.changes()]


def test_the_route_breaker_pauses_the_route_and_a_probe_closes_it() -> None:
    clock = Clock()
    gate = Gate("default", ROUTE, clock)
    for _ in range(3):
        assert gate.admit("p", "t", None)
        gate.outcome("p", "t", None, ok=False, retriable=True, error="HTTP 503")
    assert not gate.admit("p", "t", None) and gate.paused()
    assert kinds(gate) == ["breaker.opened", "flow.paused"]
    assert "HTTP 503" in (gate.holding() or "")
    assert gate.wait_hint("p", "t", None) == pytest.approx(10.0)
    clock.now += 10.0
    assert not gate.paused()  # half-open: fetching goes on, so a probe can come
    assert gate.admit("p", "t", None) and not gate.admit("p", "t", None)  # one probe
    assert kinds(gate) == ["breaker.half_opened", "flow.resumed"]
    gate.outcome("p", "t", None, ok=True, retriable=False)
    assert kinds(gate) == ["breaker.closed"] and gate.holding() is None
    assert gate.admit("p", "t", None)


def test_a_failed_probe_opens_it_again_for_longer() -> None:
    clock = Clock()
    gate = Gate("default", ROUTE, clock)
    for _ in range(3):
        gate.outcome("p", "t", None, ok=False, retriable=True)
    clock.now += 10.0
    assert gate.admit("p", "t", None)
    gate.outcome("p", "t", None, ok=False, retriable=True)
    assert gate.paused() and gate.wait_hint("p", "t", None) == pytest.approx(20.0)
    assert kinds(gate) == ["breaker.opened", "breaker.half_opened", "breaker.opened", "flow.paused"]


def test_a_task_with_its_own_breaker_does_not_stop_the_route() -> None:
    gate = Gate("default", ROUTE, Clock())
    own = BreakerSpec(failures=1, cooldown=5.0)
    gate.outcome("p", "flaky", own, ok=False, retriable=True)
    assert not gate.admit("p", "flaky", own)
    assert gate.admit("p", "other", None) and not gate.paused()
    assert gate.holding() is not None  # the route still holds the flaky task's requests
    (change,) = gate.changes()
    assert change.scope == "task p/flaky" and change.data["task"] == "flaky"


def test_without_a_route_breaker_everything_is_admitted() -> None:
    gate = Gate("default", None, Clock())
    for _ in range(50):
        gate.outcome("p", "t", None, ok=False, retriable=True)
    assert gate.admit("p", "t", None) and gate.changes() == []


@given(st.lists(st.booleans(), max_size=200))
def test_failures_of_the_task_code_never_open_it(oks: list[bool]) -> None:
    gate = Gate("default", ROUTE, Clock())
    for ok in oks:
        assert gate.admit("p", "t", None)
        gate.outcome("p", "t", None, ok=ok, retriable=False, error="ValueError")
    assert gate.changes() == []


class StatusError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status_code = status


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (Retriable("warehouse answered 503"), True),
        (ConnectionRefusedError(111, "refused"), True),
        (TimeoutError(), True),
        (StatusError(503), True),
        (StatusError(429), True),
        (StatusError(404), False),
        (urllib.error.HTTPError("http://x", 502, "bad gateway", {}, None), True),  # type: ignore[arg-type]
        (urllib.error.HTTPError("http://x", 400, "bad request", {}, None), False),  # type: ignore[arg-type]
        (urllib.error.URLError(ConnectionRefusedError(111, "refused")), True),
        (ValueError("bad row"), False),
        (KeyError("column"), False),
    ],
)
def test_which_errors_are_retriable(error: BaseException, expected: bool) -> None:
    assert retriable(error) is expected


def test_an_error_raised_from_a_refused_connection_is_retriable() -> None:
    try:
        try:
            raise ConnectionRefusedError(111, "refused")
        except ConnectionRefusedError as exc:
            raise RuntimeError("could not load") from exc
    except RuntimeError as exc:
        assert retriable(exc)
    try:
        try:
            raise ConnectionRefusedError(111, "refused")
        except ConnectionRefusedError:
            raise ValueError("a bug while handling it")  # noqa: B904 - no ``from``: not its cause
    except ValueError as exc:
        assert not retriable(exc)


def raises_retriable(ctx: TaskContext) -> None:
    raise Retriable("service down")


def raises_value_error(ctx: TaskContext) -> None:
    raise ValueError("bad input")


CONTEXT = TaskContext(run_id="r", pipeline="p", task="t", attempt=1, event={})


@pytest.mark.parametrize(
    ("task", "expected"),
    [
        (Task("t", "python", f"{__name__}:raises_retriable"), True),
        (Task("t", "python", f"{__name__}:raises_value_error"), False),
        (Task("t", "command", ("sh", "-c", "exit 75")), True),  # EX_TEMPFAIL
        (Task("t", "command", ("sh", "-c", "exit 1")), False),
        (Task("t", "command", ("sleep", "5"), timeout=0.2), False),  # its own timeout
    ],
)
def test_the_executor_says_which_failures_are_retriable(task: Task, expected: bool) -> None:
    with pytest.raises(TaskFailed) as caught:
        asyncio.run(execute(task, CONTEXT))
    assert caught.value.retriable is expected
