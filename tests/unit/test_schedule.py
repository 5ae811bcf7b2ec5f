"""Schedules without Kafka: the pure core (ticks, daylight saving time, catch-up,
overlap, jitter) and the run table applying ``ScheduleDue`` messages (one run per tick
however often it is told, state through a restore)."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.runner.flow.schedule import (
    MAX_FIRES,
    ON_TIME,
    ScheduleSpec,
    ScheduleState,
    decide,
    started,
    unbuffer,
)
from headwater.runner.log.records import ScheduleDue, TaskFinished
from headwater.runner.model.pipeline import Pipeline, Task
from headwater.runner.runs.flow import control_key, schedule_key
from headwater.runner.runs.table import Changes, Dispatched, Partition, RunTable

PARIS = ZoneInfo("Europe/Paris")
NEW_YORK = ZoneInfo("America/New_York")


def local(zone: ZoneInfo, *parts: int) -> float:
    return datetime(*parts, tzinfo=zone).timestamp()  # type: ignore[misc]


def fired_by_looks(spec: ScheduleSpec, looks: list[float]) -> list[float]:
    """The ticks started by looking at each of ``looks`` in turn (nothing running)."""
    state = decide(spec, "p", None, looks[0], False).state
    fired: list[float] = []
    for at in looks[1:]:
        decision = decide(spec, "p", state, at, False)
        fired += [fire.tick for fire in decision.fire]
        state = decision.state
    return fired


def every_minute(start: float, end: float) -> list[float]:
    return [start + 60 * i for i in range(int((end - start) // 60) + 1)]


# --- daylight saving time ---------------------------------------------------------------


def daily(zone: ZoneInfo, cron: str, day: tuple[int, int, int]) -> list[datetime]:
    """The local times a daily cron fired on the day before ``day``, on it and after it."""
    spec = ScheduleSpec(cron=cron, timezone=zone.key)
    start = local(zone, *day, 0, 0) - 86400
    fired = fired_by_looks(spec, every_minute(start, start + 3 * 86400))
    days = [datetime.fromtimestamp(t, zone) for t in fired]
    one_each = [datetime(*day).date() + timedelta(days=n) for n in (-1, 0, 1)]  # type: ignore[misc]
    assert [d.date() for d in days] == one_each, days
    return days


@pytest.mark.parametrize(("zone", "day"), [(PARIS, (2026, 3, 29)), (NEW_YORK, (2026, 3, 8))])
def test_a_daily_time_the_clock_skips_fires_once_at_the_next_valid_instant(
    zone: ZoneInfo, day: tuple[int, int, int]
) -> None:
    _before, on_the_day, after = daily(zone, "30 2 * * *", day)  # 02:00 -> 03:00
    assert (on_the_day.hour, on_the_day.minute) == (3, 0)
    assert (after.hour, after.minute) == (2, 30)


@pytest.mark.parametrize(
    ("zone", "day", "cron", "hour"),
    [(PARIS, (2026, 10, 25), "30 2 * * *", 2), (NEW_YORK, (2026, 11, 1), "30 1 * * *", 1)],
)
def test_a_daily_time_the_clock_repeats_fires_once_at_its_first_occurrence(
    zone: ZoneInfo, day: tuple[int, int, int], cron: str, hour: int
) -> None:
    before, on_the_day, after = daily(zone, cron, day)
    assert (on_the_day.hour, on_the_day.minute, on_the_day.fold) == (hour, 30, 0)
    assert on_the_day.utcoffset() == before.utcoffset()  # still summer time
    assert after.utcoffset() != before.utcoffset()


def test_an_hourly_schedule_fires_on_every_hour_that_exists() -> None:
    spec = ScheduleSpec(cron="0 * * * *", timezone="Europe/Paris")
    for day, hours in (((2026, 3, 29), 23), ((2026, 10, 25), 25)):
        start = local(PARIS, *day, 0, 0)
        end = local(PARIS, *day, 0, 0) + 86400 + 3600 * (hours - 24)  # the next midnight
        fired = fired_by_looks(spec, every_minute(start - 60, end - 1))
        assert len(fired) == hours
        assert len(set(fired)) == hours
        assert all(b - a == 3600 for a, b in itertools.pairwise(fired))


def test_every_counts_from_the_epoch_so_every_process_has_the_same_ticks() -> None:
    spec = ScheduleSpec(every=15.0)
    ticks = spec.ticks(1_000_003.2)
    assert [next(ticks) for _ in range(3)] == [1_000_005.0, 1_000_020.0, 1_000_035.0]
    assert ScheduleSpec(every=7.0).next_tick(7e9) == 7e9 + 7


# --- what a look starts -----------------------------------------------------------------


def test_a_schedule_seen_the_first_time_does_not_run_its_past() -> None:
    spec = ScheduleSpec(every=10.0, catchup="all")
    decision = decide(spec, "p", None, 1_000.5, False)
    assert decision.fire == ()
    assert decision.state.last == 1_000.5
    assert [f.tick for f in decide(spec, "p", decision.state, 1_010.2, False).fire] == [1010.0]


def test_a_tick_told_twice_runs_once() -> None:
    spec = ScheduleSpec(every=10.0)
    state = ScheduleState(995.0)
    first = decide(spec, "p", state, 1_000.1, False)
    assert [f.tick for f in first.fire] == [1000.0]
    assert decide(spec, "p", first.state, 1_000.3, False).fire == ()
    assert decide(spec, "p", first.state, 999.0, False).fire == ()  # a clock behind


@pytest.mark.parametrize(
    ("policy", "late_by", "expected"),
    [
        ("all", 1.0, [500, 600, 700, 800, 900, 1000]),
        ("latest", 1.0, [1000]),
        ("none", 1.0, [1000]),
        ("all", ON_TIME + 5, [500, 600, 700, 800, 900, 1000]),
        ("latest", ON_TIME + 5, [1000]),  # late, but the latest: it runs
        ("none", ON_TIME + 5, []),  # nothing is on time
    ],
)
def test_catchup_policies(policy: str, late_by: float, expected: list[float]) -> None:
    spec = ScheduleSpec(every=100.0, catchup=policy, window=3600.0)  # type: ignore[arg-type]
    decision = decide(spec, "p", ScheduleState(450.0), 1_000.0 + late_by, False)
    assert [f.tick for f in decision.fire] == expected
    assert all(f.late for f in decision.fire if f.tick != 1000 or late_by > ON_TIME)
    assert decision.state.last == 1000.0
    assert len(decision.passed) == 6 - len(expected)


def test_ticks_older_than_the_window_do_not_catch_up() -> None:
    spec = ScheduleSpec(every=60.0, catchup="all", window=300.0)
    decision = decide(spec, "p", ScheduleState(0.0), 6_000.5, False)
    assert [f.tick for f in decision.fire] == [5_760.0, 5_820.0, 5_880.0, 5_940.0, 6_000.0]
    assert any("before the catch-up window" in why for _, why in decision.passed)


def test_a_long_catch_up_runs_in_parts() -> None:
    spec = ScheduleSpec(every=1.0, catchup="all", window=10_000.0)
    decision = decide(spec, "p", ScheduleState(0.0), 2_000.5, False)
    assert len(decision.fire) == MAX_FIRES and decision.more
    rest = decide(spec, "p", decision.state, 2_000.5, False)
    assert rest.fire[0].tick == decision.fire[-1].tick + 1


def test_overlap_skip_buffer_one_allow() -> None:
    state = ScheduleState(995.0, current="r-previous")
    skip = decide(ScheduleSpec(every=10.0, overlap="skip"), "p", state, 1_000.1, True)
    assert skip.fire == () and "still running" in skip.passed[0][1]
    allow = decide(ScheduleSpec(every=10.0, overlap="allow"), "p", state, 1_000.1, True)
    assert [f.tick for f in allow.fire] == [1000.0]
    buffer_one = ScheduleSpec(every=10.0, overlap="buffer_one")
    kept = decide(buffer_one, "p", state, 1_000.1, True)
    assert kept.fire == () and kept.state.buffered == 1000.0
    later = decide(buffer_one, "p", kept.state, 1_010.1, True)  # one kept, the next skipped
    assert later.fire == () and later.state.buffered == 1000.0 and later.passed
    state, fire = unbuffer(later.state)
    assert fire is not None and fire.tick == 1000.0 and fire.buffered
    assert state.buffered is None
    # nothing running: the first tick of a catch-up starts, the next one waits for it
    caught = decide(
        ScheduleSpec(every=10.0, overlap="buffer_one", catchup="all"),
        "p",
        ScheduleState(975.0),
        1_000.1,
        False,
    )
    assert [f.tick for f in caught.fire] == [980.0] and caught.state.buffered == 990.0


def test_jitter_delays_a_tick_the_same_way_everywhere() -> None:
    spec = ScheduleSpec(every=60.0, jitter=30.0)
    delays = {spec.delay("p", 60.0 * n) for n in range(50)}
    assert all(0 <= d < 30 for d in delays) and len(delays) > 40
    tick = 6_000.0
    fire_at = spec.fire_at("p", tick)
    state = ScheduleState(5_999.0)
    assert decide(spec, "p", state, fire_at - 0.01, False).fire == ()
    assert [f.tick for f in decide(spec, "p", state, fire_at, False).fire] == [tick]


@settings(max_examples=200, deadline=None)
@given(
    period=st.sampled_from([1.0, 7.0, 60.0]),
    gaps=st.lists(st.floats(min_value=0.0, max_value=200.0), min_size=1, max_size=40),
)
def test_with_catchup_all_every_tick_runs_exactly_once_however_the_looks_fall(
    period: float, gaps: list[float]
) -> None:
    spec = ScheduleSpec(every=period, catchup="all", window=1e9)
    looks = [10_000.0]
    for gap in gaps:
        looks.append(looks[-1] + gap)
    fired = fired_by_looks(spec, looks)
    expected = [t for t in _ticks(spec, looks[0], looks[-1])]
    assert fired == expected


def _ticks(spec: ScheduleSpec, after: float, until: float) -> list[float]:
    out = []
    for tick in spec.ticks(after):
        if tick > until:
            return out
        out.append(tick)
    return out


# --- the run table ----------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


class Owner:
    """The partition that owns a schedule, committing after every message."""

    def __init__(self, spec: ScheduleSpec) -> None:
        self.clock = Clock()
        self.pipeline = Pipeline("p", (), (Task("a", "python", "m:a"),), schedule=spec)
        self.records: list[tuple[bytes, bytes | None]] = []
        self.runs: list[dict[str, object]] = []
        self.table = self._table(Partition())

    def _table(self, partition: Partition) -> RunTable:
        table = RunTable({"p": self.pipeline}, 3600.0, self.clock, lambda: 0.5)
        self.timers = list(table.restore(0, partition))
        return table

    def tell(self, at: float) -> Changes:
        assert self.pipeline.schedule is not None
        return self.apply(ScheduleDue("p", self.pipeline.schedule.id, at))

    def apply(self, message: object) -> Changes:
        changes = Changes()
        assert self.table.apply(0, message, changes) is None  # type: ignore[arg-type]
        for output in changes.outputs:
            if isinstance(output, Dispatched):
                self.runs.append({"run_id": output.run_id})
        records = changes.changelog()
        self.records += [(key, value) for key, value, _ in records.get(0, [])]
        self.table.committed(changes, records)
        return changes

    def restart(self) -> None:
        store = Partition().store
        batch = store.batch()
        for key, value in self.records:
            batch.fold(key, value)
        batch.commit(len(self.records))
        self.table = self._table(Partition.load(store))


def test_the_table_starts_one_run_per_tick_however_many_processes_tell_it() -> None:
    owner = Owner(ScheduleSpec(every=10.0))
    owner.tell(995.0)  # first sight
    for at in (1_000.2, 1_000.1, 1_000.4, 1_003.0):  # three processes, and a late one
        owner.clock.now = at
        owner.tell(at)
    assert len(owner.runs) == 1
    run = owner.table._partitions[0].runs[owner.runs[0]["run_id"]]  # type: ignore[index]
    assert run.event["type"] == "headwater.schedule.tick"
    assert run.event["id"] == "1970-01-01T00:16:40.000Z"
    assert run.event["data"]["scheduled"] == "1970-01-01T00:16:40.000Z"
    assert run.event["data"]["late"] is False
    # the tick's run, its results and the schedule share the schedule's partition
    assert control_key(owner.pipeline, run.event, run.run_id) == schedule_key("p")


def test_state_survives_a_restore_and_buffer_one_starts_after_the_run_ends() -> None:
    owner = Owner(ScheduleSpec(every=10.0, overlap="buffer_one"))
    owner.tell(995.0)
    owner.clock.now = 1_000.1
    owner.tell(1_000.1)
    first = str(owner.runs[0]["run_id"])
    owner.restart()
    assert [due for due, _ in owner.timers if isinstance(due, ScheduleDue)]  # a look at once
    owner.clock.now = 1_010.1
    owner.tell(1_010.1)  # the first still runs: 1010 waits
    owner.tell(1_010.2)
    assert len(owner.runs) == 1
    owner.restart()
    owner.apply(TaskFinished(first, "a", 1, True, {}, None, 0.0, 0.0))
    assert len(owner.runs) == 2
    second = owner.table._partitions[0].runs[str(owner.runs[1]["run_id"])]
    assert second.event["data"]["scheduled"] == "1970-01-01T00:16:50.000Z"
    assert second.event["data"]["buffered"] is True


def test_a_look_from_a_clock_far_ahead_is_refused() -> None:
    owner = Owner(ScheduleSpec(every=10.0))
    assert owner.pipeline.schedule is not None
    due = ScheduleDue("p", owner.pipeline.schedule.id, 1_000.0 + 86400)
    problem = owner.table.apply(0, due, Changes())
    assert problem is not None and "ahead" in problem


def test_a_look_for_an_edited_schedule_changes_nothing() -> None:
    owner = Owner(ScheduleSpec(every=10.0))
    changes = Changes()
    assert owner.table.apply(0, ScheduleDue("p", "s-old", 1_000.0), changes) is None
    assert not changes.schedules and not changes.outputs


def test_started_records_the_run() -> None:
    assert started(ScheduleState(1.0), "r").current == "r"


def test_cron_nicknames_read_as_their_expressions() -> None:
    daily = ScheduleSpec(cron="@daily", timezone="UTC")
    assert daily.next_tick(86_400 * 3 + 5) == 86_400 * 4
    assert ScheduleSpec(cron="@hourly").next_tick(3_600.5) == 7_200
