"""The run table without Kafka: what one control message changes and causes, what a
commit keeps, the changelog's round trip, and the one backoff schedule's loops."""

from __future__ import annotations

import orjson

from headwater.runner.flow.backoff import Backoff, Retry
from headwater.runner.log.records import (
    EventsBatched,
    MarkersDue,
    RetryDue,
    RunRequested,
    TaskFinished,
    concerns,
    decode_task_request,
)
from headwater.runner.model.pipeline import Batching, Pipeline, Task, Trigger
from headwater.runner.runs import changelog
from headwater.runner.runs.table import (
    Changes,
    Completed,
    Dispatched,
    Partition,
    RunTable,
    memory_store,
)

PIPELINE = Pipeline(
    "p",
    (Trigger("t"), Trigger("b", batch=Batching(max_events=2, max_wait=5.0))),
    (Task("a", "python", "m:a", route="gpu", retries=1), Task("b", "python", "m:b", needs=("a",))),
)
NOW = 1_000.0


def table(retention: float = 3600.0) -> RunTable:
    t = RunTable({"p": PIPELINE}, retention, clock=lambda: NOW, rand=lambda: 0.5)
    list(t.restore(0, Partition()))
    return t


def restored_from(*records: tuple[bytes, bytes | None]) -> Partition:
    """A partition as a restore leaves it after folding ``records`` into its store."""
    store = memory_store()
    batch = store.batch()
    for key, value in records:
        batch.fold(key, value)
    batch.commit(len(records))
    return Partition.load(store)


def finished(task: str, ok: bool = True, attempt: int = 1) -> TaskFinished:
    return TaskFinished("r1", task, attempt, ok, output={"n": 1} if ok else None)


def test_a_requested_run_dispatches_its_first_task_to_its_route() -> None:
    t, changes = table(), Changes()
    assert t.apply(0, RunRequested("r1", "p", {"id": "e1"}), changes) is None
    [output] = changes.outputs
    assert isinstance(output, Dispatched) and output.route == "gpu" and output.run_id == "r1"
    request = decode_task_request(output.value)
    assert request["task"] == "a" and request["attempt"] == 1 and request["event"] == {"id": "e1"}
    assert [note.hook for note in changes.notes] == ["started"]
    assert list(changes.runs) == ["r1"]


def test_a_duplicate_request_changes_and_causes_nothing() -> None:
    t = table()
    t.apply(0, RunRequested("r1", "p", {"id": "e1"}), Changes())
    again = Changes()
    assert t.apply(0, RunRequested("r1", "p", {"id": "e1"}), again) is None
    assert again == Changes()


def test_a_failure_schedules_a_retry_and_success_finishes_after_the_commit() -> None:
    t, changes = table(), Changes()
    t.apply(0, RunRequested("r1", "p", {}), changes)
    t.apply(0, finished("a", ok=False), changes)
    [(partition, due, at)] = changes.timers
    assert partition == 0 and due == RetryDue("r1", "a", 1) and at > NOW
    t.apply(0, due, changes)
    t.apply(0, finished("a", attempt=2), changes)
    t.apply(0, finished("b"), changes)
    assert isinstance(changes.outputs[-1], Completed)
    assert [n.hook for n in changes.notes][-1] == "finished"
    t.committed(changes)
    # The changelog record of the finished run restores a marker, on disk only.
    restored = restored_from(changelog.run_record(changes.runs["r1"][1]))
    assert "r1" not in restored.runs
    marker = restored.run("r1")
    assert marker is not None and marker.tasks == {} and marker.status == "succeeded"


def test_messages_that_cannot_be_applied_say_why() -> None:
    t = table()
    assert "not loaded" in (t.apply(0, RunRequested("r9", "gone", {}), Changes()) or "")
    assert "not in the run table" in (t.apply(0, finished("a"), Changes()) or "")
    batch = EventsBatched("w", "p", 0, None, [{"id": "1", "source": "/s"}])
    assert "no batching trigger 0 " in (t.apply(0, batch, Changes()) or "")
    assert concerns(batch) == {"window": "w"} and concerns(finished("a")) == {"run_id": "r1"}


def test_a_full_window_becomes_a_run_request_and_its_changelog_tombstone() -> None:
    t, changes = table(), Changes()
    events = [{"id": str(i), "source": "/s"} for i in range(2)]
    t.apply(0, EventsBatched("w", "p", 1, None, events), changes)
    [request] = changes.outputs
    assert isinstance(request, RunRequested) and request.pipeline == "p"
    assert changes.windows == {"w": (0, None)}
    key, value = changelog.window_record("w", None)
    assert key == b"window:w" and value is None


def test_the_sweep_expires_old_markers_only_once_committed() -> None:
    t = table(retention=100.0)
    old = {"run_id": "old", "pipeline": "p", "event": {}, "created_at": 0.0}
    record = {**old, "status": "succeeded", "finished_at": NOW - 500, "tasks": {}}
    list(t.restore(0, restored_from((b"old", orjson.dumps(record)))))
    changes = Changes()
    t.apply(0, MarkersDue(0), changes)
    assert changes.expired == [(0, "old")]
    assert changes.timers[0][1] == MarkersDue(0) and changes.timers[0][2] == NOW + 25.0
    assert t.apply(0, RunRequested("old", "p", {}), Changes()) is None  # still a marker
    t.committed(changes)
    fresh = Changes()
    t.apply(0, RunRequested("old", "p", {}), fresh)
    assert list(fresh.runs) == ["old"]


def test_retry_counts_consecutive_failures_on_one_schedule() -> None:
    retry = Retry(Backoff(initial=0.5, maximum=2.0, jitter=0.0), rand=lambda: 0.5)
    assert [retry.failed() for _ in range(4)] == [0.5, 1.0, 2.0, 2.0]
    retry.succeeded()
    assert retry.failed() == 0.5


class _Client:
    def __init__(self, log: list[str], name: str) -> None:
        self._log, self._name = log, name

    async def start(self) -> None:
        self._log.append(f"start {self._name}")

    async def stop(self) -> None:
        self._log.append(f"stop {self._name}")


async def test_clients_stop_in_reverse_and_kafka_errors_are_wrapped_once() -> None:
    import pytest
    from aiokafka.errors import KafkaConnectionError, UnknownTopicOrPartitionError

    from headwater.runner.errors import KafkaFailed, retriable
    from headwater.runner.log import kafka

    calls: list[str] = []
    with pytest.raises(KafkaFailed) as caught:
        async with kafka.started(_Client(calls, "producer"), _Client(calls, "consumer")):
            raise KafkaConnectionError("broker gone")
    assert calls == ["start producer", "start consumer", "stop consumer", "stop producer"]
    assert retriable(caught.value) and isinstance(caught.value.__cause__, KafkaConnectionError)
    with pytest.raises(KafkaFailed) as caught:
        async with kafka.started():
            raise UnknownTopicOrPartitionError()
    assert retriable(caught.value) is UnknownTopicOrPartitionError.retriable
    assert not retriable(ValueError("a bug")) and retriable(ConnectionResetError())


class _Producer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    async def send_and_wait(self, topic: str, value: bytes, **where: object) -> None:
        self.sent.append((topic, value))


async def test_timers_that_went_off_are_released() -> None:
    import asyncio
    import time

    from headwater.runner.runs.timers import Timers

    producer = _Producer()
    timers = Timers(producer, "control", time.time)
    for attempt in range(200):
        timers.arm(0, RetryDue("r", "a", attempt), time.time())
    timers.arm(0, MarkersDue(0), time.time() + 3600)
    assert timers.pending(0) == 201
    for _ in range(100):
        if len(producer.sent) == 200:
            break
        await asyncio.sleep(0.01)
    assert len(producer.sent) == 200 and timers.pending(0) == 1  # only the sweep waits
    timers.forget(0)
    assert timers.pending(0) == 0


def test_a_redelivery_after_its_window_closed_joins_no_later_window() -> None:
    pipeline = Pipeline(
        "p",
        (Trigger("b", batch=Batching(max_events=2, max_wait=5.0), id="readings"),),
        (Task("a", "python", "m:a"),),
    )
    now = [NOW]
    t = RunTable({"p": pipeline}, 3600.0, clock=lambda: now[0], rand=lambda: 0.5)
    list(t.restore(0, Partition()))

    def batch(*ids: str) -> EventsBatched:
        return EventsBatched("w", "p", "readings", None, [{"id": i, "source": "/s"} for i in ids])

    closing = Changes()
    t.apply(0, batch("e1", "e2"), closing)
    [run] = closing.outputs
    assert isinstance(run, RunRequested) and [c.ids for _, c in closing.closed] == [
        (("/s", "e1"), ("/s", "e2"))
    ]
    t.committed(closing)
    again = Changes()
    t.apply(0, batch("e2", "e1", "e3"), again)  # two redeliveries and one new event
    assert again.outputs == [] and again.windows["w"][1] is not None
    assert [e["id"] for e in again.windows["w"][1].events] == ["e3"]
    # The ids live in the changelog: a restored partition still drops the redelivery.
    restored = restored_from(
        *(changelog.closed_record(closed, closed.run_id) for _, closed in closing.closed)
    )
    t2 = RunTable({"p": pipeline}, 3600.0, clock=lambda: now[0], rand=lambda: 0.5)
    list(t2.restore(0, restored))
    after_restore = Changes()
    t2.apply(0, batch("e1"), after_restore)
    assert after_restore.windows["w"][1] is None
    # After the retention the ids expire (with a tombstone) and the id is new again.
    now[0] += 3601.0
    sweep = Changes()
    t.apply(0, MarkersDue(0), sweep)
    assert sweep.expired_closed == [(0, run.run_id)]
    t.committed(sweep)
    late = Changes()
    t.apply(0, batch("e1"), late)
    [late_run] = late.outputs  # e3's window, now full
    assert isinstance(late_run, RunRequested)
    assert [e["id"] for e in late_run.event["data"]["events"]] == ["e3", "e1"]
    assert changelog.closed_record(None, run.run_id) == (f"closed:{run.run_id}".encode(), None)


def test_an_attempt_overdue_on_a_held_route_waits_and_is_lost_only_after_the_hold() -> None:
    from headwater.runner.log.records import RouteHeld

    now = [NOW]
    t = RunTable({"p": PIPELINE}, 3600.0, clock=lambda: now[0], rand=lambda: 0.5, task_timeout=10.0)
    list(t.restore(0, Partition()))
    t.apply(0, RunRequested("r1", "p", {"id": "e1"}), Changes())
    lost_after = 2 * 10.0 + 10.0
    now[0] += lost_after + 1  # overdue; the gpu route's breaker has been open all along
    t.apply(0, RouteHeld("gpu", "circuit breaker of route gpu is open: HTTP 503"), Changes())
    assert t.held("gpu") is not None and t.held("default") is None
    held = Changes()
    t.apply(0, MarkersDue(0), held)
    assert held.outputs == [] and not held.runs, "a held attempt was taken for lost"
    now[0] += lost_after + 1  # no notice since: the hold ended and its backlog had its time
    assert t.held("gpu") is None
    lost = Changes()
    t.apply(0, MarkersDue(0), lost)
    [(_, run)] = lost.runs.values()
    assert run.tasks["a"].status == "retry_wait" and "no result came in time" in (
        run.tasks["a"].error or ""
    )


def test_runs_in_progress_leave_out_those_the_batch_finished() -> None:
    # The count rides with the batch's offsets and may be the partition's last word for a
    # long time: a run finished in the batch must not count (it held the router paused).
    t, changes = table(), Changes()
    t.apply(0, RunRequested("r1", "p", {}), changes)
    t.apply(0, RunRequested("r2", "p", {"id": "e2"}), changes)
    assert t.in_progress(0, changes) == 2
    t.apply(0, finished("a"), changes)
    t.apply(0, finished("b"), changes)  # r1 ends in this batch
    assert t.in_progress(0, changes) == 1
    assert t.in_progress(1, changes) == 0  # another partition's count is its own
    t.committed(changes)
    assert t.in_progress(0) == 1 and t.in_progress(0, Changes()) == 1
