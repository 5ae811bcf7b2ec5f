"""Concurrency, throttle and the pipeline's run timeout in the run table, without Kafka:
which runs start, which wait and in what order, and that a restore from the changelog
brings back the same slots, queues and recent starts."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.runner.log.records import FlowDue, RunDue, RunRequested, TaskFinished
from headwater.runner.model.pipeline import Concurrency, Pipeline, Task, Throttle, Trigger
from headwater.runner.runs.flow import control_key, key_of
from headwater.runner.runs.table import Changes, Completed, Dispatched, Partition, RunTable


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def pipeline(**limits: object) -> Pipeline:
    return Pipeline("p", (Trigger("t"),), (Task("a", "python", "m:a"),), **limits)  # type: ignore[arg-type]


def event(n: int, customer: str) -> dict[str, object]:
    return {"id": f"e{n}", "source": "s", "data": {"customer": customer}}


class Harness:
    """One partition of a run table, committed after every message like the processor."""

    def __init__(self, p: Pipeline) -> None:
        self.clock = Clock()
        self.pipeline = p
        self.table = RunTable({"p": p}, 3600.0, self.clock, lambda: 0.5)
        self.timers = list(self.table.restore(0, Partition()))
        self.started: list[str] = []
        self.finished: list[str] = []
        self.records: list[tuple[bytes, bytes | None]] = []

    def apply(self, message: object) -> Changes:
        changes = Changes()
        assert self.table.apply(0, message, changes) is None  # type: ignore[arg-type]
        for output in changes.outputs:
            if isinstance(output, Dispatched):
                self.started.append(output.run_id)
            if isinstance(output, Completed):
                self.finished.append(output.run.run_id)
        records = changes.changelog()
        self.records += [(key, value) for key, value, _ in records.get(0, [])]
        self.table.committed(changes, records)
        self.timers += [(due, at) for _, due, at in changes.timers]
        return changes

    def request(self, n: int, customer: str = "c1") -> None:
        self.apply(RunRequested(f"r{n}", "p", event(n, customer)))

    def finish(self, n: int) -> None:
        self.apply(TaskFinished(f"r{n}", "a", 1, True, {}, None, 0.0, 0.0))

    def restarted(self) -> Harness:
        """A new table restored from everything this one wrote to its changelog."""
        again = Harness.__new__(Harness)
        again.clock, again.pipeline = self.clock, self.pipeline
        again.table = RunTable({"p": self.pipeline}, 3600.0, self.clock, lambda: 0.5)
        store = Partition().store
        batch = store.batch()
        for key, value in self.records:
            batch.fold(key, value)
        batch.commit(len(self.records))
        again.timers = list(again.table.restore(0, Partition.load(store)))
        again.started, again.finished, again.records = [], [], list(self.records)
        return again


def test_concurrency_holds_the_excess_per_key_in_order() -> None:
    h = Harness(pipeline(concurrency=Concurrency(2, "data.customer")))
    for n in range(5):
        h.request(n, "c1")
    h.request(9, "c2")
    assert h.started == ["r0", "r1", "r9"]  # c2 is not held behind c1
    h.finish(1)
    assert h.started[-1] == "r2"
    h.finish(0)
    h.finish(2)
    assert h.started == ["r0", "r1", "r9", "r2", "r3", "r4"]


def test_a_restore_keeps_the_slots_and_the_queue() -> None:
    h = Harness(pipeline(concurrency=Concurrency(1)))
    for n in range(3):
        h.request(n)
    assert h.started == ["r0"]
    again = h.restarted()
    flows = [due for due, _ in again.timers if isinstance(due, FlowDue)]
    for due in flows:
        again.apply(due)
    assert again.started == []  # r0 still holds the one slot
    again.finish(0)
    assert again.started == ["r1"]
    again.finish(1)
    assert again.started == ["r1", "r2"]


def test_throttle_spaces_starts_over_the_period_and_survives_a_restore() -> None:
    h = Harness(pipeline(throttle=Throttle(2, 60.0)))
    for n in range(5):
        h.request(n)
    assert h.started == ["r0", "r1"]
    [due_at] = [at for due, at in h.timers if isinstance(due, FlowDue)]
    assert due_at == 1_060.5  # 60 s and the margin
    h.clock.now = 1_030.0
    again = h.restarted()
    for due, _ in [t for t in again.timers if isinstance(t[0], FlowDue)]:
        again.apply(due)
    assert again.started == []  # both starts of 1000.0 still count after the restore
    again.clock.now = 1_060.5
    again.apply(FlowDue("p", None))
    assert again.started == ["r2", "r3"]
    again.clock.now = 1_121.0
    again.apply(FlowDue("p", None))
    assert again.started == ["r2", "r3", "r4"]


def test_the_pipeline_timeout_fails_a_waiting_run_and_its_place_is_given_up() -> None:
    h = Harness(pipeline(concurrency=Concurrency(1), timeout=30.0))
    h.request(0)
    h.request(1)
    h.request(2)
    h.clock.now = 1_030.0
    changes = h.apply(RunDue("r1"))
    [completed] = [o for o in changes.outputs if isinstance(o, Completed)]
    assert completed.run.status == "failed"
    assert "timed out after 30s" in (completed.run.tasks["a"].error or "")
    h.apply(RunDue("r0"))  # the running one too: its slot goes to r2
    assert h.finished == ["r1", "r0"] and h.started == ["r0", "r2"]


def test_the_results_of_a_grouped_run_are_keyed_by_its_group() -> None:
    p = pipeline(concurrency=Concurrency(1, "data.customer"))
    h = Harness(p)
    changes = h.apply(RunRequested("r0", "p", event(0, "c1")))
    [dispatched] = [o for o in changes.outputs if isinstance(o, Dispatched)]
    assert b'"key":"[\\"p\\",\\"c1\\"]"' in dispatched.value
    assert control_key(p, event(0, "c1"), "r0") == b'["p","c1"]'
    assert control_key(pipeline(), event(0, "c1"), "r0") == b"r0"


@given(st.one_of(st.none(), st.text(), st.integers(), st.lists(st.integers()), st.booleans()))
def test_a_key_value_is_small_text_or_none(value: object) -> None:
    got = key_of({"data": {"k": value}}, "data.k")
    assert got is None or (isinstance(got, str) and len(got) <= 200)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(["req", "fin"]), st.integers(0, 3)), min_size=1, max_size=60)
)
def test_never_more_than_the_limit_per_key_and_order_kept(ops: list[tuple[str, int]]) -> None:
    h = Harness(pipeline(concurrency=Concurrency(2, "data.customer")))
    running: dict[str, set[str]] = {}
    requested: dict[str, list[str]] = {}
    n = 0
    for op, k in ops:
        customer = f"c{k}"
        if op == "req":
            h.request(n, customer)
            requested.setdefault(customer, []).append(f"r{n}")
            n += 1
        elif running.get(customer):
            h.finish(int(sorted(running[customer])[0][1:]))
        for run_id in h.started:
            c = next(c for c, ids in requested.items() if run_id in ids)
            running.setdefault(c, set()).add(run_id)
        for run_id in h.finished:
            for ids in running.values():
                ids.discard(run_id)
        assert all(len(ids) <= 2 for ids in running.values())
    for ids in requested.values():
        started = [r for r in h.started if r in ids]
        assert started == ids[: len(started)]  # in the order requested
