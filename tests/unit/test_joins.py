"""Joins without Kafka: the pure fold (either order, repeats, ``any: N``, expiry, bounds)
and the run table applying ``EventsJoined`` / ``JoinDue`` (one run per complete join,
across a restore; an expired join reported with what was missing)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.runner.log.records import EventsJoined, JoinDue
from headwater.runner.model.pipeline import JoinSpec, Pipeline, Task, Trigger
from headwater.runner.runs import joins
from headwater.runner.runs.joins import MAX_EVENTS, Join, join_key
from headwater.runner.runs.table import Changes, Partition, Reported, RunTable

SPEC = JoinSpec(("paid", "shipped"), 2, "data.order_id", 7200.0, "j-1")
KEY = join_key("orders", "j-1", "o-1")


def event(n: int | str, order: str = "o-1") -> dict[str, object]:
    return {"id": f"e{n}", "source": "/shop", "type": "x", "data": {"order_id": order}}


def joined(trigger: str, *events: dict[str, object]) -> EventsJoined:
    return EventsJoined(KEY, "orders", trigger, "o-1", list(events))


def test_either_order_completes_one_join() -> None:
    for first, second in (("paid", "shipped"), ("shipped", "paid")):
        fold = joins.add(None, joined(first, event(1)), SPEC, 100.0)
        assert fold.runs == [] and fold.join is not None and fold.check_at == 7300.0
        done = joins.add(fold.join, joined(second, event(2)), SPEC, 200.0)
        assert done.join is None and len(done.runs) == 1
        data = done.runs[0].event["data"]
        assert [e["id"] for e in data["events"]] == ["e1", "e2"]
        assert set(data["triggers"]) == {first, second}
        assert done.runs[0].event["type"] == "headwater.join"


def test_a_trigger_twice_then_the_other_is_one_run_with_every_event() -> None:
    fold = joins.add(None, joined("paid", event(1)), SPEC, 100.0)
    fold = joins.add(fold.join, joined("paid", event(2)), SPEC, 110.0)
    assert fold.runs == [] and fold.join is not None
    assert fold.join.matched() == ["paid"]
    done = joins.add(fold.join, joined("shipped", event(3)), SPEC, 120.0)
    assert len(done.runs) == 1
    assert [e["id"] for e in done.runs[0].event["data"]["events"]] == ["e1", "e2", "e3"]


def test_a_redelivered_event_counts_once_also_after_its_join_closed() -> None:
    fold = joins.add(None, joined("paid", event(1), event(1)), SPEC, 100.0)
    assert fold.repeated == 1
    done = joins.add(fold.join, joined("shipped", event(2)), SPEC, 101.0)
    ids = {("/shop", "e1"), ("/shop", "e2")}
    again = joins.add(None, joined("paid", event(1)), SPEC, 102.0, lambda i: i in ids)
    assert len(done.runs) == 1 and again.join is None and again.repeated == 1


def test_a_join_not_complete_in_time_expires_and_says_what_was_missing() -> None:
    fold = joins.add(None, joined("paid", event(1)), SPEC, 100.0)
    assert fold.join is not None
    early = joins.due(fold.join, JoinDue(KEY, 100.0), SPEC, 7000.0)
    assert early.join is fold.join and early.expired == []
    gone = joins.due(fold.join, JoinDue(KEY, 100.0), SPEC, 7300.0)
    assert gone.join is None and gone.runs == []
    (expired,) = gone.expired
    assert (expired.matched, expired.missing, expired.events) == (("paid",), ("shipped",), 1)
    # an event after the window, before the timer: the old join expires, a new one opens
    late = joins.add(fold.join, joined("shipped", event(2)), SPEC, 7400.0)
    assert late.runs == [] and len(late.expired) == 1
    assert late.join is not None and late.join.matched() == ["shipped"]


def test_any_n_of_m() -> None:
    spec = JoinSpec(("a", "b", "c"), 2, "data.order_id", 60.0, "j-2")
    fold = joins.add(None, joined("a", event(1)), spec, 1.0)
    fold = joins.add(fold.join, joined("a", event(2)), spec, 2.0)
    assert fold.runs == []
    fold = joins.add(fold.join, joined("c", event(3)), spec, 3.0)
    assert len(fold.runs) == 1 and fold.join is None


def test_a_join_keeps_a_bounded_number_of_events() -> None:
    many = [event(i) for i in range(MAX_EVENTS + 50)]
    fold = joins.add(None, joined("paid", *many), SPEC, 1.0)
    assert fold.join is not None
    assert len(fold.join.events["paid"]) == MAX_EVENTS and fold.join.dropped == 50
    restored = Join.from_json(fold.join.to_json())
    assert restored.dropped == 50 and len(restored.seen) == MAX_EVENTS


@settings(max_examples=150, deadline=None)
@given(
    order=st.permutations(["paid", "paid", "shipped", "shipped"]),
    restart_after=st.integers(min_value=0, max_value=4),
)
def test_one_run_whatever_the_order_and_a_restore_anywhere(
    order: list[str], restart_after: int
) -> None:
    owner = Owner()
    for position, trigger in enumerate(order):
        if position == restart_after:
            owner.restart()
        owner.apply(joined(trigger, event(position)))
    # a model of the join: events gather until both triggers matched, then a run starts
    expected: list[list[str]] = []
    gathering: list[tuple[str, str]] = []
    for position, trigger in enumerate(order):
        gathering.append((trigger, f"e{position}"))
        if {t for t, _ in gathering} == {"paid", "shipped"}:
            expected.append([e for _, e in gathering])
            gathering = []
    got = [[e["id"] for e in run["data"]["events"]] for run in owner.runs]  # type: ignore[index]
    assert [sorted(ids) for ids in got] == [sorted(ids) for ids in expected]


# --- the run table ----------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


class Owner:
    """The partition that owns the join's key, committing after every message."""

    def __init__(self) -> None:
        self.clock = Clock()
        triggers = (Trigger("shop.paid", id="paid"), Trigger("shop.shipped", id="shipped"))
        self.pipeline = Pipeline("orders", triggers, (Task("a", "python", "m:a"),), join=SPEC)
        self.records: list[tuple[bytes, bytes | None]] = []
        self.runs: list[dict[str, object]] = []
        self.reported: list[Reported] = []
        self.table = self._table(Partition())

    def _table(self, partition: Partition) -> RunTable:
        table = RunTable({"orders": self.pipeline}, 3600.0, self.clock, lambda: 0.5)
        self.timers = list(table.restore(0, partition))
        return table

    def apply(self, message: object) -> Changes:
        changes = Changes()
        assert self.table.apply(0, message, changes) is None  # type: ignore[arg-type]
        for output in changes.outputs:
            if isinstance(output, Reported):
                self.reported.append(output)
            elif hasattr(output, "event"):
                self.runs.append(output.event)
        records = changes.changelog()
        self.records += [(key, value) for key, value, _ in records.get(0, [])]
        self.table.committed(changes, records)
        self.timers += [(due, at) for _, due, at in changes.timers]
        return changes

    def restart(self) -> None:
        store = Partition().store
        batch = store.batch()
        for key, value in self.records:
            batch.fold(key, value)
        batch.commit(len(self.records))
        self.table = self._table(Partition.load(store))


def test_the_table_keeps_an_open_join_across_a_restore_and_expires_it_by_its_timer() -> None:
    owner = Owner()
    owner.apply(joined("paid", event(1)))
    owner.restart()
    dues = [(due, at) for due, at in owner.timers if isinstance(due, JoinDue)]
    assert dues == [(JoinDue(KEY, 1_000.0), 1_000.0 + SPEC.within)]
    owner.clock.now = 1_000.0 + SPEC.within
    owner.apply(dues[0][0])
    assert owner.runs == []
    (report,) = owner.reported
    assert report.change.kind == "join.expired"
    assert report.change.data["missing"] == ["shipped"]
    assert report.change.data["key"] == "o-1"
    owner.restart()
    assert not owner.table._partitions[0].joins  # the expiry is in the changelog


def test_the_table_refuses_events_for_a_pipeline_without_a_join() -> None:
    owner = Owner()
    problem = owner.table.apply(0, EventsJoined(KEY, "nope", "paid", "o-1", []), Changes())
    assert problem is not None and "has no join" in problem


def test_a_long_or_odd_key_value_becomes_a_small_key() -> None:
    from headwater.runner.envelope import CloudEvent
    from headwater.runner.runs.windows import key_value

    long = CloudEvent("1", "/s", "t", {"order_id": "x" * 10_000})
    value = key_value(long, "data.order_id")
    assert value is not None and value.startswith("sha256:") and len(value) < 80
    nested = CloudEvent("1", "/s", "t", {"order_id": {"a": [1, 2]}})
    assert key_value(nested, "data.order_id") == '{"a":[1,2]}'
    assert key_value(CloudEvent("1", "/s", "t", {"order_id": None}), "data.order_id") is None
    assert key_value(CloudEvent("1", "/s", "t", "not a mapping"), "data.order_id") is None


def test_an_open_join_whose_join_was_edited_away_expires_and_says_so() -> None:
    owner = Owner()
    owner.apply(joined("paid", event(1)))
    owner.pipeline = Pipeline("orders", owner.pipeline.triggers, owner.pipeline.tasks)  # no join
    owner.restart()
    dues = [due for due, _ in owner.timers if isinstance(due, JoinDue)]
    assert dues  # looked at again at once: the edit gave it no time
    owner.apply(dues[0])
    (report,) = owner.reported
    assert report.change.data["matched"] == ["paid"] and owner.runs == []
    assert not owner.table._partitions[0].joins
