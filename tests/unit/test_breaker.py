"""The circuit breaker's states under an injected clock (issue 12's pure core)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from headwater.runner.flow.breaker import Breaker, BreakerSpec


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def breaker(**spec: float) -> tuple[Breaker, Clock]:
    clock = Clock()
    return Breaker(BreakerSpec(**spec), clock), clock  # type: ignore[arg-type]


def test_consecutive_retriable_failures_open_it_and_it_refuses_until_the_cooldown() -> None:
    b, clock = breaker(failures=3, cooldown=30.0)
    for _ in range(2):
        b.failed(retriable=True)
    assert b.state == "closed" and b.allow()
    b.failed(retriable=True)
    assert b.state == "open" and not b.allow() and b.reopens_at == 1_030.0
    clock.now = 1_029.9
    assert not b.allow()
    clock.now = 1_030.0
    assert b.state == "half-open"
    assert b.allow() and not b.allow()  # one probe at a time
    b.succeeded()
    assert b.state == "closed" and b.allow()


def test_a_failed_probe_opens_it_again_for_longer_up_to_the_cap() -> None:
    b, clock = breaker(failures=1, cooldown=10.0, growth=3.0, max_cooldown=50.0)
    b.failed(retriable=True)
    waits = []
    for _ in range(4):
        assert b.reopens_at is not None
        waits.append(b.reopens_at - clock.now)
        clock.now = b.reopens_at
        assert b.allow()
        b.failed(retriable=True)
    assert waits == [10.0, 30.0, 50.0, 50.0]
    clock.now += 50.0
    assert b.allow()
    b.succeeded()  # closed: the next open starts from the first cooldown again
    b.failed(retriable=True)
    assert b.reopens_at == clock.now + 10.0


def test_a_failure_rate_over_the_window_opens_it_only_with_enough_calls() -> None:
    b, clock = breaker(failures=100, rate=0.5, window=60.0, min_calls=10)
    for i in range(9):
        clock.now += 1
        b.failed(retriable=True) if i % 2 else b.succeeded()
    assert b.state == "closed"  # 9 calls: not enough to judge
    clock.now += 1
    b.failed(retriable=True)  # 10 calls, 5 failed
    assert b.state == "open"


def test_outcomes_older_than_the_window_do_not_count() -> None:
    b, clock = breaker(failures=100, rate=0.5, window=10.0, min_calls=4)
    for _ in range(3):
        b.failed(retriable=True)  # 3 calls: fewer than min_calls, nothing judged
    clock.now += 11.0
    for _ in range(3):
        b.succeeded()
    b.failed(retriable=True)
    assert b.state == "closed"  # 1 of the last 4 failed (with the old ones: 4 of 7)


@given(st.lists(st.booleans(), max_size=200))
def test_non_retriable_failures_never_open_it(outcomes: list[bool]) -> None:
    b, _ = breaker(failures=1, rate=0.1, min_calls=1)
    for ok in outcomes:
        b.succeeded() if ok else b.failed(retriable=False)
    assert b.state == "closed"


def test_a_spec_that_cannot_work_is_refused() -> None:
    for bad in ({"failures": 0}, {"rate": 1.5}, {"cooldown": 0.0}, {"growth": 0.5}):
        with pytest.raises(ValueError):
            BreakerSpec(**bad)  # type: ignore[arg-type]
