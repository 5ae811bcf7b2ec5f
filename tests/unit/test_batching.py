"""Batching windows: when they close, what the run sees, and what never happens twice."""

from __future__ import annotations

from typing import Any

from headwater.runner.envelope import CloudEvent
from headwater.runner.log.records import EventsBatched, WindowDue
from headwater.runner.model.pipeline import Batching
from headwater.runner.runs import windows as batching
from headwater.runner.runs.windows import Window, key_value
from headwater.runner.tasks import TaskContext

T0 = 1_000.0


def events(first: int, count: int, source: str = "/s") -> list[dict[str, Any]]:
    return [{"id": str(i), "source": source, "data": {"n": i}} for i in range(first, first + count)]


def batched(items: list[dict[str, Any]], window: str = "w") -> EventsBatched:
    return EventsBatched(window, "p", 0, None, items)


def ids(request: Any) -> list[str]:
    return [e["id"] for e in request.event["data"]["events"]]


def test_max_events_closes_windows_and_the_rest_opens_the_next() -> None:
    spec = Batching(max_events=50, max_wait=5.0)
    fold = batching.add(None, batched(events(0, 120)), spec, T0)
    assert [len(ids(r)) for r in fold.runs] == [50, 50]
    assert ids(fold.runs[1])[0] == "50"
    assert fold.window is not None and len(fold.window.events) == 20
    assert fold.check_at == T0 + 5.0  # a new window: arm its timer
    run = fold.runs[0].event
    assert run["type"] == batching.BATCH_TYPE and run["data"]["reason"] == "max_events"
    assert run["data"]["count"] == 50 and run["id"] == fold.runs[0].run_id


def test_max_wait_closes_at_the_deadline_not_before() -> None:
    spec = Batching(max_events=1000, max_wait=2.0)
    fold = batching.add(None, batched(events(0, 3)), spec, T0)
    window = fold.window
    assert window is not None and not fold.runs
    early = batching.due(window, WindowDue("w", T0), spec, T0 + 1.0)
    assert early.window is window and early.check_at == T0 + 2.0 and not early.runs
    closed = batching.due(window, WindowDue("w", T0), spec, T0 + 2.0)
    assert closed.window is None
    assert [ids(r) for r in closed.runs] == [["0", "1", "2"]]
    assert closed.runs[0].event["data"]["reason"] == "max_wait"


def test_appending_to_an_open_window_arms_no_new_timer() -> None:
    spec = Batching(max_wait=2.0)
    first = batching.add(None, batched(events(0, 1)), spec, T0)
    second = batching.add(first.window, batched(events(1, 1)), spec, T0 + 0.5)
    assert second.window is first.window and second.check_at is None


def test_debounce_waits_for_quiet_and_moves_its_deadline() -> None:
    spec = Batching(quiet_for=10.0, key="subject")
    window = batching.add(None, batched(events(0, 1)), spec, T0).window
    window = batching.add(window, batched(events(1, 1)), spec, T0 + 8.0).window
    assert window is not None
    timer = WindowDue("w", T0)
    still = batching.due(window, timer, spec, T0 + 10.0)  # the first timer: not quiet yet
    assert still.runs == [] and still.check_at == T0 + 18.0
    quiet = batching.due(window, timer, spec, T0 + 18.0)
    assert [r.event["data"]["reason"] for r in quiet.runs] == ["quiet_for"]
    assert ids(quiet.runs[0]) == ["0", "1"]


def test_a_stale_timer_changes_nothing() -> None:
    spec = Batching(max_wait=1.0)
    window = batching.add(None, batched(events(0, 1)), spec, T0 + 5).window
    stale = batching.due(window, WindowDue("w", T0), spec, T0 + 100)  # an older window's timer
    assert stale.window is window and not stale.runs and stale.check_at is None
    assert batching.due(None, WindowDue("w", T0), spec, T0 + 100).runs == []


def test_an_event_delivered_twice_is_in_the_window_once() -> None:
    spec = Batching(max_events=10, max_wait=1.0)
    window = batching.add(None, batched(events(0, 3)), spec, T0).window
    again = batching.add(window, batched(events(1, 3)), spec, T0 + 0.1)
    assert again.window is not None
    assert [e["id"] for e in again.window.events] == ["0", "1", "2", "3"]
    other_source = batching.add(again.window, batched(events(0, 1, "/t")), spec, T0 + 0.2)
    assert other_source.window is not None and len(other_source.window.events) == 5


def test_a_window_closes_before_its_events_outgrow_a_kafka_message() -> None:
    spec = Batching(max_wait=60.0)
    big = [{"id": str(i), "source": "/s", "data": "x" * 100_000} for i in range(12)]
    fold = batching.add(None, batched(big), spec, T0)
    assert [len(ids(r)) for r in fold.runs] == [5, 5]
    assert {r.event["data"]["reason"] for r in fold.runs} == {"max_bytes"}
    assert fold.window is not None and len(fold.window.events) == 2


def test_the_same_window_gives_the_same_run_id_and_another_window_another() -> None:
    spec = Batching(max_events=2, max_wait=1.0)
    once = batching.add(None, batched(events(0, 4)), spec, T0).runs
    again = batching.add(None, batched(events(0, 4)), spec, T0).runs
    assert [r.run_id for r in once] == [r.run_id for r in again]
    assert len({r.run_id for r in once}) == 2
    later = batching.add(None, batched(events(0, 2)), spec, T0 + 1).runs
    assert later[0].run_id != once[0].run_id  # same events, a later window: another run


def test_window_round_trips_through_its_changelog_json() -> None:
    spec = Batching(max_wait=1.0)
    window = batching.add(None, batched(events(0, 3)), spec, T0).window
    assert window is not None
    restored = Window.from_json(window.to_json())
    assert restored.to_json() == window.to_json()
    assert restored.seen == window.seen and restored.size == window.size


def test_key_values() -> None:
    event = CloudEvent(
        id="1", source="/s", type="t", subject="a/b", data={"bucket": "in", "n": {"k": 3}}
    )
    assert key_value(event, None) is None
    assert key_value(event, "subject") == "a/b"
    assert key_value(event, "data.bucket") == "in"
    assert key_value(event, "data.n.k") == "3"  # non-strings as JSON
    assert key_value(event, "data.missing") is None


def test_a_task_sees_the_events_of_its_run() -> None:
    single = {"id": "1", "source": "/s", "type": "t"}
    spec = Batching(max_events=2, max_wait=1.0)
    batch = batching.add(None, batched(events(0, 2)), spec, T0).runs[0].event
    assert TaskContext("r", "p", "t", 1, single).events == [single]
    assert [e["id"] for e in TaskContext("r", "p", "t", 1, batch).events] == ["0", "1"]
