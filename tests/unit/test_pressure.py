"""The backpressure valve (``runner/flow/pressure.py``): closes past a bound, opens at half,
reports each transition once, and a consumer's own additions close it between readings."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from headwater.runner.errors import ConfigError
from headwater.runner.flow.pressure import PENDING_RUNS, Valve
from headwater.runner.settings import Settings


def test_closes_past_its_bound_and_opens_at_half() -> None:
    valve = Valve("router", "hw.events", {"runs": 100, "tasks": 10}, instance="a")
    assert valve.is_open
    assert valve.observe({"runs": 100})  # at the bound: open
    assert not valve.observe({"runs": 101})
    [paused] = valve.changes()
    assert paused.kind == "flow.paused" and paused.scope == "router"
    assert paused.data["reason"] == "runs 101 > 100"
    assert paused.data["counts"] == {"runs": 101, "tasks": 0}
    assert paused.data["bounds"] == {"runs": 100, "tasks": 10}
    assert paused.data["topic"] == "hw.events" and paused.data["instance"] == "a"
    assert not valve.observe({"runs": 51})  # above half: still closed
    assert not valve.observe({"runs": 10, "tasks": 6})  # another above half
    assert valve.changes() == []
    assert valve.observe({"tasks": 5})
    [resumed] = valve.changes()
    assert resumed.kind == "flow.resumed"
    assert resumed.data["reason"] == "drained: runs 10 <= 50; tasks 5 <= 5"


def test_a_missing_reading_keeps_its_last_value_and_unknown_ones_are_ignored() -> None:
    valve = Valve("bridges", "hw.events", {"events": 200})
    valve.observe({"events": 300})
    assert not valve.observe({})  # a failed look: nothing new
    assert not valve.observe({"something else": 0})
    assert not valve.is_open


def test_a_consumer_adds_its_own_work_at_once() -> None:
    valve = Valve("router", "hw.events", {PENDING_RUNS: 100})
    assert valve.add(PENDING_RUNS, 100)  # before any reading: counted from zero
    assert not valve.add(PENDING_RUNS, 1)
    assert [c.kind for c in valve.changes()] == ["flow.paused"]
    assert valve.add("not watched", 10**9) is False  # unknown reading: state unchanged
    assert valve.observe({PENDING_RUNS: 40})  # the next reading replaces the sum


def test_a_valve_without_bounds_never_closes() -> None:
    valve = Valve("bridges", "hw.events", {})
    assert valve.observe({"events": 10**9}) and valve.add("events", 1)


@given(
    st.lists(st.tuples(st.sampled_from(["a", "b"]), st.integers(0, 300)), min_size=1, max_size=60)
)
def test_transitions_alternate_and_match_the_state(readings: list[tuple[str, int]]) -> None:
    valve = Valve("router", "hw.events", {"a": 100, "b": 100})
    kinds = []
    for name, value in readings:
        is_open = valve.observe({name: value})
        kinds += [c.kind for c in valve.changes()]
        assert is_open == valve.is_open
        if value > 100:
            assert not is_open  # never open with a reading over its bound
    expected = "flow.paused"
    for kind in kinds:  # paused, resumed, paused...: never the same twice in a row
        assert kind == expected
        expected = "flow.resumed" if kind == "flow.paused" else "flow.paused"
    assert valve.is_open == (not kinds or kinds[-1] == "flow.resumed")


def test_bounds_come_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "HEADWATER_MAX_PENDING_RUNS": "1_000",
            "HEADWATER_MAX_PENDING_TASKS": "0",
            "HEADWATER_MAX_EVENTS_LAG": "5000",
        }
    )
    assert settings.bounds.pending_runs == 1000
    assert settings.bounds.pending_tasks == 0
    assert settings.bounds.events_lag == 5000
    defaults = Settings.from_env({}).bounds
    assert (defaults.pending_runs, defaults.pending_tasks, defaults.events_lag) == (
        50_000,
        20_000,
        200_000,
    )
    for bad in ("-1", "lots", "1e6", ""):
        with pytest.raises(ConfigError, match="HEADWATER_MAX_PENDING_RUNS"):
            Settings.from_env({"HEADWATER_MAX_PENDING_RUNS": bad})


def test_a_valve_that_closes_in_normal_work_reports_only_a_lasting_pause() -> None:
    now = [0.0]
    valve = Valve(
        "worker default",
        "hw.tasks.default",
        {"running": 10},
        report_after=5.0,
        clock=lambda: now[0],
    )
    for _ in range(20):  # a busy worker at its bound: closes and opens many times a second
        valve.observe({"running": 11})
        now[0] += 0.1
        assert valve.changes() == []
        valve.observe({"running": 5})
        assert valve.changes() == []
    valve.observe({"running": 11})
    now[0] += 4.9
    assert valve.changes() == []
    now[0] += 0.2  # the pause has lasted: reported, then its resume
    assert [c.kind for c in valve.changes()] == ["flow.paused"]
    valve.observe({"running": 0})
    assert [c.kind for c in valve.changes()] == ["flow.resumed"]
    valve.observe({"running": 11})
    now[0] += 6.0
    valve.observe({"running": 0})  # a lasting pause first seen when it ends: both, in order
    assert [c.kind for c in valve.changes()] == ["flow.paused", "flow.resumed"]
