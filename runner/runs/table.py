"""The run table: the runs and open batching windows of the control partitions a process
owns, and what one control message changes in them. Pure, no I/O.

``RunTable.apply`` folds one decoded control message into its partition and records in
``Changes`` what changed (for the changelog) and what it causes: task requests, the run
requests of closed windows, completions, timers and observer notes, in the order they
arose. The control processor writes all of it in one Kafka transaction and calls
``committed`` once that committed. What must always hold:

- a message that cannot be applied changes nothing and returns why (it goes to the DLQ);
- memory holds only what is live: running runs and open windows. A finished run is kept
  as a marker (enough to refuse a duplicate trigger) and a closed window as its event ids,
  both in the partition's local store (``store.Store``), written there only after the
  commit; they expire after ``retention``, swept per partition (``MarkersDue``) through
  the store's time index, with a tombstone for the changelog;
- after any error the processor drops the table and restores it from the changelog, so
  what it holds never outlives an aborted transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal

from headwater.runner.envelope import epoch_iso
from headwater.runner.flow.gate import Change
from headwater.runner.flow.schedule import (
    Fire,
    ScheduleState,
    decide,
    is_tick,
    started,
    tick_event,
    unbuffer,
)
from headwater.runner.log.records import (
    HOLD_NOTICE_EVERY,
    Control,
    Due,
    EventsBatched,
    EventsJoined,
    FlowDue,
    JoinDue,
    MarkersDue,
    RetryDue,
    RouteHeld,
    RunCancelled,
    RunDue,
    RunRequested,
    ScheduleDue,
    TaskFinished,
    WindowDue,
    encode_task_request,
)
from headwater.runner.model.pipeline import Pipeline
from headwater.runner.runs import changelog, joins, windows
from headwater.runner.runs.flow import (
    Flows,
    Group,
    control_key,
    group_of,
    keyed_apart,
    starts_record,
)
from headwater.runner.runs.joins import Join
from headwater.runner.runs.machine import (
    Dispatch,
    Effect,
    Finish,
    Run,
    ScheduleRetry,
    TaskRecord,
    begin,
    cancel,
    drift,
    fail,
    new_run,
    run_id_for,
    step,
)
from headwater.runner.runs.store import MemoryKV, Store
from headwater.runner.runs.windows import Closed, Window
from headwater.runner.settings import TASK_TIMEOUT

LOST_GRACE = 60.0  # seconds at most, on top of twice a task's timeout
SWEEP_EVERY = 60.0  # seconds between sweeps of expired markers (less for short retentions)
SWEEP_LIMIT = 5_000  # markers and closed windows expired per sweep (one transaction)
SWEEP_AGAIN = 1.0  # seconds to the next sweep when one reached its limit
#: A ``ScheduleDue`` whose time is further ahead of this processor's clock is refused.
SCHEDULE_AHEAD = 300.0
#: Ticks that did not run, named one by one in the log per look (the rest counted).
PASSED_SAID = 3


def memory_store() -> Store:
    return Store(MemoryKV(), "", 0)


@dataclass
class Partition:
    """What one control partition holds: its local ``store`` (markers, closed windows'
    event ids, and a copy of what is live), and in memory its running runs, its open
    windows, and what a batch not yet committed finished or closed (``runs`` holds
    those runs until the commit, ``closed`` those windows by run id, indexed in
    ``batched`` by window, source and event id)."""

    store: Store = field(default_factory=memory_store)
    runs: dict[str, Run] = field(default_factory=dict)
    windows: dict[str, Window] = field(default_factory=dict)
    closed: dict[str, Closed] = field(default_factory=dict)
    batched: dict[tuple[str, str, str], str] = field(default_factory=dict)
    #: concurrency slots, throttle starts and waiting runs (``runs.flow``)
    flows: Flows = field(default_factory=Flows)
    #: the state of each schedule this partition owns, by (pipeline, schedule id)
    schedules: dict[tuple[str, str], ScheduleState] = field(default_factory=dict)
    #: open joins, by join key
    joins: dict[str, Join] = field(default_factory=dict)

    @classmethod
    def load(cls, store: Store) -> Partition:
        """What is live in ``store``, in memory."""
        runs = {run.run_id: run for run in store.running()}
        partition = cls(store, runs, dict(store.windows()))
        partition.schedules = dict(store.schedules())
        partition.joins = dict(store.joins())
        return partition

    def run(self, run_id: str) -> Run | None:
        """The run, or the marker of a finished one."""
        return self.runs.get(run_id) or self.store.marker(run_id)

    def is_closed(self, window: str, source: str, event_id: str) -> bool:
        """Whether a closed window (kept for the dedup retention) holds this event."""
        if (window, source, event_id) in self.batched:
            return True
        return self.store.closed_run(window, source, event_id) is not None

    def keep_closed(self, closed: Closed) -> None:
        self.closed[closed.run_id] = closed
        for source, event_id in closed.ids:
            self.batched[(closed.window, source, event_id)] = closed.run_id

    def drop_closed(self, run_id: str) -> None:
        closed = self.closed.pop(run_id, None)
        if closed is None:
            return
        for source, event_id in closed.ids:
            if self.batched.get((closed.window, source, event_id)) == run_id:
                del self.batched[(closed.window, source, event_id)]


# --- what applying messages causes, in the order it arose --------------------------------


@dataclass(frozen=True, slots=True)
class Dispatched:
    """A task request for the workers of ``route``, keyed by its run id."""

    route: str
    run_id: str
    value: bytes


@dataclass(frozen=True, slots=True)
class Completed:
    """A finished run whose completion event is to be published."""

    run: Run


@dataclass(frozen=True, slots=True)
class Reported:
    """A transition for ``hw.status`` (a join that expired), written in the transaction."""

    change: Change


@dataclass(frozen=True, slots=True)
class Stopped:
    """A cancelled run's attempts still out: their workers are told to stop them."""

    run_id: str
    pipeline: str
    tasks: tuple[str, ...]
    reason: str


#: What a batch caused (``RunRequested``: a window's or a join's run, to its group's partition).
Output = Dispatched | Completed | RunRequested | Reported | Stopped


@dataclass(frozen=True, slots=True)
class Note:
    """An observer hook to call after the commit: ``started``, ``task`` or ``finished``."""

    hook: Literal["started", "task", "finished"]
    run: Run
    task: str = ""
    record: TaskRecord | None = None


@dataclass
class Changes:
    """What a batch of control messages changed and caused."""

    runs: dict[str, tuple[int, Run]] = field(default_factory=dict)
    windows: dict[str, tuple[int, Window | None]] = field(default_factory=dict)
    closed: list[tuple[int, Closed]] = field(default_factory=list)
    outputs: list[Output] = field(default_factory=list)
    expired: list[tuple[int, str]] = field(default_factory=list)  # finished runs' markers
    expired_closed: list[tuple[int, str]] = field(default_factory=list)  # by run id
    timers: list[tuple[int, Due, float]] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)
    #: throttle keys' recent starts (``None``: none left), by group
    starts: dict[Group, tuple[int, list[float] | None]] = field(default_factory=dict)
    #: schedules' states, by (pipeline, schedule id)
    schedules: dict[tuple[str, str], tuple[int, ScheduleState]] = field(default_factory=dict)
    #: open joins (``None``: closed or expired), by join key
    joins: dict[str, tuple[int, Join | None]] = field(default_factory=dict)
    #: lines for the log, once committed (ticks that did not run)
    said: list[str] = field(default_factory=list)

    def changelog(self) -> dict[int, list[Record]]:
        """The changelog records of what changed, per partition, in the order they are
        written (and folded into the partition's store after the commit)."""
        out: dict[int, list[Record]] = {}
        for partition, run in self.runs.values():
            # A finished run's record is its marker: all a restore keeps of it (its outputs
            # went out with its completion), so the changelog holds ~250 bytes per run.
            kept = run if run.status == "running" else marker(run)
            out.setdefault(partition, []).append((*changelog.run_record(kept), kept))
        for key, (partition, window) in self.windows.items():
            out.setdefault(partition, []).append((*changelog.window_record(key, window), window))
        for key, (partition, join) in self.joins.items():
            out.setdefault(partition, []).append((*changelog.join_record(key, join), join))
        for partition, closed in self.closed:
            record = changelog.closed_record(closed, closed.run_id)
            out.setdefault(partition, []).append((*record, closed))
        for partition, run_id in self.expired:
            out.setdefault(partition, []).append((run_id.encode(), None, None))
        for partition, closed_id in self.expired_closed:
            tombstone, _ = changelog.closed_record(None, closed_id)
            out.setdefault(partition, []).append((tombstone, None, None))
        for group, (partition, starts) in self.starts.items():
            out.setdefault(partition, []).append((*starts_record(group, starts), None))
        for (name, schedule), (partition, state) in self.schedules.items():
            record = changelog.schedule_record(name, schedule, state)
            out.setdefault(partition, []).append((*record, None))
        return out


#: A changelog record: key, value (``None``: a tombstone) and what it encodes, if known.
Record = tuple[bytes, bytes | None, Run | Window | Closed | Join | None]


class RunTable:
    def __init__(
        self,
        pipelines: Mapping[str, Pipeline],
        retention: float,
        clock: Callable[[], float],
        rand: Callable[[], float],
        task_timeout: float = TASK_TIMEOUT,
    ) -> None:
        self._pipelines = pipelines
        self._retention = retention
        self._task_timeout = task_timeout
        self._clock = clock
        self._rand = rand
        self._partitions: dict[int, Partition] = {}
        #: route -> (when, why) of the last ``RouteHeld`` notice its workers wrote
        self._held: dict[str, tuple[float, str]] = {}
        self._started = clock()

    def has(self, partition: int) -> bool:
        return partition in self._partitions

    def in_progress(self, partition: int, changes: Changes | None = None) -> int:
        """The partition's runs still going once ``changes`` (the batch being committed)
        is: running or waiting for a slot — what the router's backpressure counts as work
        to do. The runs the batch finished are not counted: this number rides with the
        batch's offsets and may stay the partition's last word for a long time (until
        its next message), so counting them held the router paused with nothing to do."""
        table = self._partitions.get(partition)
        if table is None:
            return 0
        ended = 0
        if changes is not None:
            ended = sum(
                1
                for at, run in changes.runs.values()
                if at == partition and run.status != "running" and run.run_id in table.runs
            )
        return len(table.runs) - ended

    def forget(self, partition: int) -> None:
        table = self._partitions.pop(partition, None)
        if table is not None:
            table.store.close()

    def clear(self) -> None:
        for partition in list(self._partitions):
            self.forget(partition)

    def restore(self, partition: int, restored: Partition) -> Iterator[tuple[Due, float]]:
        """Take a partition as restored (its store up to date, what is live loaded); yields
        the timers to arm again."""
        self.forget(partition)
        self._partitions[partition] = restored
        starts = restored.store.starts()
        restored.flows = Flows.load(restored.runs.values(), starts, self._pipelines)
        for group in list(restored.flows.queues):  # limits may have changed: look again now
            yield FlowDue(*group), self._clock()
        for run in restored.runs.values():
            pipeline = self._pipelines.get(run.pipeline)
            if run.status == "running" and pipeline is not None and pipeline.timeout:
                yield RunDue(run.run_id), run.created_at + pipeline.timeout
        for run in restored.runs.values():
            pipeline = self._pipelines.get(run.pipeline)
            if run.status == "running" and (pipeline is None or drift(run, pipeline)):
                # Removed, or changed beyond what the run can finish on: a message for the
                # run ends it with a failed completion (no task is named: nothing runs).
                yield RetryDue(run.run_id, "", 0), self._clock()
                continue
            for name, task in run.tasks.items():
                if run.status == "running" and task.status == "retry_wait":
                    yield RetryDue(run.run_id, name, task.attempt), task.retry_at or self._clock()
                elif run.status == "running" and task.status == "dispatched" and not task.deadline:
                    task.deadline = self._clock() + self._lost_after(None)  # older records
        for window in restored.windows.values():
            pipeline = self._pipelines.get(window.pipeline)
            spec = pipeline.batch_of(window.trigger) if pipeline else None
            if spec is not None:
                yield WindowDue(window.window, window.opened_at), window.deadline(spec)
        for key, join in restored.joins.items():
            joined = self._pipelines.get(join.pipeline)
            within = joined.join.within if joined is not None and joined.join else 0.0
            yield JoinDue(key, join.opened_at), join.opened_at + within
        for name, schedule in restored.schedules:
            pipeline = self._pipelines.get(name)
            if pipeline is not None and pipeline.schedule and pipeline.schedule.id == schedule:
                # ticks missed while nobody owned it: caught up now, not at the next tick
                yield ScheduleDue(name, schedule, self._clock()), self._clock()
        yield MarkersDue(partition), self._clock() + self.sweep_every()

    def _lost_after(self, timeout: float | None) -> float:
        """How long after its dispatch an attempt without a result counts as lost: twice
        its timeout (it may wait for a worker's slot first) and up to a minute more."""
        timeout = timeout or self._task_timeout
        return 2 * timeout + min(LOST_GRACE, timeout)

    def _lost(self, run_id: str, task: str, attempt: int, at: float) -> TaskFinished:
        """The failed result the sweep applies for an attempt whose result never came (a
        result that comes later is ignored: it is not the dispatched attempt any more)."""
        error = "no result came in time (the request or its worker was lost); attempt abandoned"
        return TaskFinished(run_id, task, attempt, False, None, error, at, at)

    def sweep_every(self) -> float:
        return min(SWEEP_EVERY, self._retention / 4)

    def apply(self, partition: int, message: Control, changes: Changes) -> str | None:
        """Fold one message into ``partition``; returns why it cannot be applied."""
        table = self._partitions[partition]
        if isinstance(message, MarkersDue):
            self._sweep(partition, table, changes)
            periods = {p.name: p.throttle.period for p in self._pipelines.values() if p.throttle}
            table.flows.expire(self._clock(), periods)
            for group, starts in table.flows.changed_starts().items():
                changes.starts[group] = (partition, starts)
            return None
        if isinstance(message, RouteHeld):
            self._held[message.route] = (self._clock(), message.reason)
            return None
        if isinstance(message, EventsBatched | WindowDue):
            return self._apply_window(message, partition, table, changes)
        if isinstance(message, EventsJoined | JoinDue):
            return self._apply_join(message, partition, table, changes)
        if isinstance(message, ScheduleDue):
            problem = self._apply_schedule(message, partition, table, changes)
            if problem is not None:
                return problem
        elif isinstance(message, FlowDue):
            self._release((message.pipeline, message.key), partition, table, changes)
        elif isinstance(message, RunDue):
            self._time_out(message.run_id, partition, table, changes)
        elif isinstance(message, RunCancelled):
            self._cancel(message, partition, table, changes)
        else:
            problem = self._apply_run(message, partition, table, changes)
            if problem is not None:
                return problem
        for group, starts in table.flows.changed_starts().items():
            changes.starts[group] = (partition, starts)
        return None

    def committed(
        self,
        changes: Changes,
        records: Mapping[int, list[Record]] | None = None,
        offsets: Mapping[int, int] | None = None,
    ) -> None:
        """The batch's transaction committed: its changelog ``records`` (default: those of
        ``changes``) go to each partition's store, with the changelog offset to read from
        next (``offsets``, when known); finished runs and closed windows leave memory."""
        records = changes.changelog() if records is None else records
        for partition, written in records.items():
            batch = self._partitions[partition].store.batch()
            for key, value, decoded in written:
                batch.fold(key, value, decoded)
            batch.commit((offsets or {}).get(partition))
        for partition, run in changes.runs.values():
            if run.status != "running":
                self._partitions[partition].runs.pop(run.run_id, None)
        for partition, closed in changes.closed:
            self._partitions[partition].drop_closed(closed.run_id)

    def _apply_window(
        self,
        message: EventsBatched | WindowDue,
        partition: int,
        table: Partition,
        changes: Changes,
    ) -> str | None:
        window = table.windows.get(message.window)
        if isinstance(message, EventsBatched):
            name, trigger = message.pipeline, message.trigger
        elif window is not None and window.opened_at == message.opened_at:
            name, trigger = window.pipeline, window.trigger
        else:
            return None  # the timer of a window that closed already
        pipeline = self._pipelines.get(name)
        spec = pipeline.batch_of(trigger) if pipeline else None
        if spec is None:
            return f"pipeline {name!r} has no batching trigger {trigger!r} in this runner"
        now = self._clock()
        if isinstance(message, EventsBatched):
            key = message.window

            def closed(identity: tuple[str, str]) -> bool:
                return table.is_closed(key, *identity)

            fold = windows.add(window, message, spec, now, closed)
        else:
            fold = windows.due(window, message, spec, now)
        if fold.window is None:
            table.windows.pop(message.window, None)
        else:
            table.windows[message.window] = fold.window
        if fold.window is not window or isinstance(message, EventsBatched):
            changes.windows[message.window] = (partition, fold.window)
        if fold.window is not None and fold.check_at is not None:
            due = WindowDue(message.window, fold.window.opened_at)
            changes.timers.append((partition, due, fold.check_at))
        for run in fold.runs:  # each lives in the partition of its own id
            closed_window = Closed.of(run, message.window, now)
            table.keep_closed(closed_window)  # a later event of this batch sees it
            changes.closed.append((partition, closed_window))
        changes.outputs.extend(fold.runs)
        return None

    def _apply_join(
        self,
        message: EventsJoined | JoinDue,
        partition: int,
        table: Partition,
        changes: Changes,
    ) -> str | None:
        join = table.joins.get(message.join)
        name = message.pipeline if isinstance(message, EventsJoined) else join and join.pipeline
        pipeline = self._pipelines.get(name) if name else None
        spec = pipeline.join if pipeline is not None else None
        now = self._clock()
        if isinstance(message, EventsJoined):
            if spec is None:
                return f"pipeline {message.pipeline!r} has no join in this runner"
            key = message.join

            def closed(identity: tuple[str, str]) -> bool:
                return table.is_closed(key, *identity)

            fold = joins.add(join, message, spec, now, closed)
        else:
            fold = joins.due(join, message, spec, now)
        if fold.join is None:
            table.joins.pop(message.join, None)
        else:
            table.joins[message.join] = fold.join
        if fold.join is not join or isinstance(message, EventsJoined):
            changes.joins[message.join] = (partition, fold.join)
        if fold.join is not None and fold.check_at is not None:
            changes.timers.append(
                (partition, JoinDue(message.join, fold.join.opened_at), fold.check_at)
            )
        for run in fold.runs:
            done = Closed.of(run, message.join, now)
            table.keep_closed(done)  # a later event of this batch sees it
            changes.closed.append((partition, done))
        changes.outputs.extend(fold.runs)
        for expired in fold.expired:
            data = expired.data()
            changes.outputs.append(
                Reported(Change("join.expired", f"join {expired.pipeline}", data))
            )
            missing = ", ".join(expired.missing) or "nothing (its join was removed)"
            changes.said.append(
                f"join of {expired.pipeline!r} for key {expired.key!r} expired: missing {missing}"
            )
        return None

    def _apply_run(
        self,
        message: RunRequested | TaskFinished | RetryDue,
        partition: int,
        table: Partition,
        changes: Changes,
    ) -> str | None:
        run = table.run(message.run_id)
        name = message.pipeline if isinstance(message, RunRequested) else run and run.pipeline
        pipeline = self._pipelines.get(name) if name else None
        if pipeline is None:
            if isinstance(message, RunRequested):
                return f"pipeline {message.pipeline!r} is not loaded by this runner"
            if run is None:
                return f"run {message.run_id} is not in the run table"
            if run.status != "running":
                return None  # a late message for a finished run of a removed pipeline
            fail(run, f"pipeline {run.pipeline!r} is no longer loaded", self._clock())
            self._finished(run, None, partition, table, changes)
            return None
        now = self._clock()
        if isinstance(message, RunRequested) and run is None:
            created = new_run(message, pipeline, now)
            table.runs[created.run_id] = created
            changes.runs[created.run_id] = (partition, created)
            if pipeline.timeout:
                changes.timers.append((partition, RunDue(created.run_id), now + pipeline.timeout))
            group = group_of(pipeline, created.event)
            if group is None:
                self._begin(created, pipeline, partition, table, changes)
            else:  # behind the runs of its group already waiting, if any
                table.flows.enqueue(created, group)
                self._release(group, partition, table, changes)
            return None
        transition = step(run, message, pipeline, now, self._rand())
        new = transition.run
        if not transition.applied or new is None:
            return None
        table.runs[new.run_id] = new
        changes.runs[new.run_id] = (partition, new)
        if isinstance(message, TaskFinished) and message.task in new.tasks:
            changes.notes.append(Note("task", new, message.task, new.tasks[message.task]))
        self._effects(new, pipeline, transition.effects, partition, table, changes)
        return None

    def _begin(
        self, run: Run, pipeline: Pipeline, partition: int, table: Partition, changes: Changes
    ) -> None:
        changes.notes.append(Note("started", run))
        self._effects(run, pipeline, begin(run, pipeline, self._clock()), partition, table, changes)

    def _effects(
        self,
        run: Run,
        pipeline: Pipeline,
        effects: list[Effect],
        partition: int,
        table: Partition,
        changes: Changes,
    ) -> None:
        for effect in effects:
            match effect:
                case Dispatch(task=task_name, attempt=attempt):
                    key = None  # the result's Kafka key: its run id, or its group's
                    if keyed_apart(pipeline, run.event):
                        key = control_key(pipeline, run.event, run.run_id).decode()
                    value = encode_task_request(
                        run.run_id,
                        run.pipeline,
                        task_name,
                        attempt,
                        run.event,
                        run.upstream_outputs(pipeline, task_name),
                        key,
                    )
                    task = pipeline.task(task_name)
                    changes.outputs.append(Dispatched(task.route, run.run_id, value))
                    lost_after = self._lost_after(task.timeout)
                    run.tasks[task_name].deadline = self._clock() + lost_after
                case ScheduleRetry(task=task_name, attempt=attempt, at=at):
                    changes.timers.append((partition, RetryDue(run.run_id, task_name, attempt), at))
                case Finish():
                    self._finished(run, pipeline, partition, table, changes)

    def _finished(
        self,
        run: Run,
        pipeline: Pipeline | None,
        partition: int,
        table: Partition,
        changes: Changes,
    ) -> None:
        """``run`` ended: publish its completion, free its slot for its group's next run."""
        changes.runs[run.run_id] = (partition, run)
        changes.outputs.append(Completed(run))
        changes.notes.append(Note("finished", run))
        table.flows.release(run.run_id)
        group = group_of(pipeline, run.event) if pipeline is not None else None
        if group is not None and table.flows.waiting(group):
            self._release(group, partition, table, changes)
        if pipeline is not None and pipeline.schedule is not None and is_tick(run.event):
            self._unbuffer(run, pipeline, partition, table, changes)

    def _release(self, group: Group, partition: int, table: Partition, changes: Changes) -> None:
        """Start the waiting runs of ``group`` that its limits let start now, in order; arm
        a timer for when the throttle lets the next one start."""
        flows, now = table.flows, self._clock()
        pipeline = self._pipelines.get(group[0])
        while (run_id := flows.head(group)) is not None:
            run = table.runs.get(run_id)
            if run is None or run.status != "running" or run.queued is None:
                flows.pop(group)  # it ended while waiting (its timeout)
                continue
            if pipeline is None:  # removed while its runs waited
                flows.pop(group)
                fail(run, f"pipeline {run.pipeline!r} is no longer loaded", now)
                self._finished(run, None, partition, table, changes)
                continue
            changed = drift(run, pipeline)
            if changed is not None:  # edited beyond what it can run on while it waited
                flows.pop(group)
                fail(run, f"pipeline {run.pipeline!r} {changed}", now)
                self._finished(run, pipeline, partition, table, changes)
                continue
            wait = flows.admits(run, pipeline, now)
            if wait is not None:
                armed = flows.armed.get(group)
                if wait != float("inf") and (armed is None or armed > wait or armed < now):
                    flows.armed[group] = wait  # one timer per group, not one per waiting run
                    changes.timers.append((partition, FlowDue(*group), wait))
                return
            flows.pop(group)
            flows.start(run, pipeline, now)
            changes.runs[run.run_id] = (partition, run)
            self._begin(run, pipeline, partition, table, changes)

    # --- schedules -----------------------------------------------------------------------

    def _apply_schedule(
        self, message: ScheduleDue, partition: int, table: Partition, changes: Changes
    ) -> str | None:
        """Start the runs of the ticks due by ``message.at`` (``flow.schedule.decide``)."""
        pipeline = self._pipelines.get(message.pipeline)
        spec = pipeline.schedule if pipeline is not None else None
        if pipeline is None or spec is None or spec.id != message.schedule:
            return None  # removed or edited since: the current schedule's looks count
        now = self._clock()
        if message.at > now + SCHEDULE_AHEAD:
            ahead = message.at - now
            return (
                f"schedule.due for {ahead:.0f}s ahead of this processor's clock "
                "(its writer's clock is wrong)"
            )
        key = (pipeline.name, spec.id)
        state = table.schedules.get(key)
        current = table.runs.get(state.current) if state and state.current else None
        running = current is not None and current.status == "running"
        decision = decide(spec, pipeline.name, state, message.at, running)
        state = decision.state
        for fire in decision.fire:
            state = self._fire(fire, pipeline, state, partition, table, changes)
        table.schedules[key] = state
        changes.schedules[key] = (partition, state)
        if decision.passed:
            said = ", ".join(f"{epoch_iso(t)} ({why})" for t, why in decision.passed[:PASSED_SAID])
            more = len(decision.passed) - PASSED_SAID
            tail = f" and {more} more" if more > 0 else ""
            changes.said.append(f"schedule of {pipeline.name!r}: ticks not run: {said}{tail}")
        if decision.more:  # a long catch-up: the next runs at once, in their own batch
            changes.timers.append((partition, message, now))
        return None

    def _fire(
        self,
        fire: Fire,
        pipeline: Pipeline,
        state: ScheduleState,
        partition: int,
        table: Partition,
        changes: Changes,
    ) -> ScheduleState:
        """A tick's run starts (here: its partition is its schedule's)."""
        assert pipeline.schedule is not None
        event = tick_event(pipeline.schedule, pipeline.name, fire, self._clock())
        run_id = run_id_for(pipeline.name, event["id"], event["source"])
        self._apply_run(RunRequested(run_id, pipeline.name, event), partition, table, changes)
        return started(state, run_id)

    def _unbuffer(
        self, run: Run, pipeline: Pipeline, partition: int, table: Partition, changes: Changes
    ) -> None:
        """The latest tick's run ended: a tick buffered behind it starts."""
        assert pipeline.schedule is not None
        key = (pipeline.name, pipeline.schedule.id)
        state = table.schedules.get(key)
        if state is None or state.current != run.run_id:
            return
        state, fire = unbuffer(state)
        if fire is not None:
            state = self._fire(fire, pipeline, state, partition, table, changes)
        table.schedules[key] = state
        changes.schedules[key] = (partition, state)

    def _time_out(self, run_id: str, partition: int, table: Partition, changes: Changes) -> None:
        """The pipeline's ``timeout`` of ``run_id`` passed: it fails, waiting or not."""
        run = table.runs.get(run_id)
        if run is None or run.status != "running":
            return
        pipeline = self._pipelines.get(run.pipeline)
        if pipeline is None or not pipeline.timeout:
            return  # its timeout was removed (a restore arms none for it)
        now = self._clock()
        if now < run.created_at + pipeline.timeout:  # lengthened since it was armed
            changes.timers.append((partition, RunDue(run_id), run.created_at + pipeline.timeout))
            return
        waited = (
            " while waiting for its concurrency/throttle turn" if run.queued is not None else ""
        )
        fail(
            run, f"run timed out after {pipeline.timeout:g}s (the pipeline's timeout){waited}", now
        )
        self._finished(run, pipeline, partition, table, changes)

    def _cancel(
        self, message: RunCancelled, partition: int, table: Partition, changes: Changes
    ) -> None:
        """``headwater run cancel``: a running run (waiting for its turn or not) ends
        cancelled and its attempts out are told to stop; any other changes nothing."""
        run = table.run(message.run_id)
        if run is None or run.status != "running":
            state = "not in the run table" if run is None else f"already {run.status}"
            changes.said.append(f"cancel of run {message.run_id}: {state}; nothing to cancel")
            return
        why = f"cancelled: {message.reason}" if message.reason else "cancelled"
        _, stopped = cancel(run, why, self._clock())
        if stopped:
            changes.outputs.append(Stopped(run.run_id, run.pipeline, tuple(stopped), why))
        self._finished(run, self._pipelines.get(run.pipeline), partition, table, changes)

    def held(self, route: str) -> str | None:
        """Why ``route``'s workers hold its tasks, if they said so within a notice's time."""
        notice = self._held.get(route)
        if notice is None or self._clock() - notice[0] > 3 * HOLD_NOTICE_EVERY:
            return None
        return notice[1]

    def _waiting(self, pipeline_name: str, task_name: str, now: float) -> bool:
        """Whether an overdue attempt may be waiting in a held route rather than lost: its
        route was held within the attempt's lost-time (its backlog drains after the hold
        ends), or this table started too recently to have heard a hold notice."""
        if now - self._started < 3 * HOLD_NOTICE_EVERY:
            return True
        pipeline = self._pipelines.get(pipeline_name)
        if pipeline is None:
            return False
        try:
            task = pipeline.task(task_name)
        except KeyError:
            return False
        notice = self._held.get(task.route)
        return notice is not None and now - notice[0] < self._lost_after(task.timeout)

    def _sweep(self, partition: int, table: Partition, changes: Changes) -> None:
        """Expire the partition's old markers (from memory once committed), give up on
        attempts whose result is overdue (lost request, dead worker), arm the next sweep."""
        now = self._clock()
        table.store.stamp()  # its owner keeps it current: an idle partition's stays trusted
        markers, closed = table.store.due(now - self._retention, SWEEP_LIMIT)
        changes.expired.extend((partition, run_id) for run_id in markers)
        changes.expired_closed.extend((partition, run_id) for run_id in closed)
        more = len(markers) + len(closed) >= SWEEP_LIMIT  # the rest in a second
        for run in [run for run in table.runs.values() if run.status == "running"]:
            for name, task in list(run.tasks.items()):
                if task.status == "dispatched" and task.deadline and task.deadline <= now:
                    if self._waiting(run.pipeline, name, now):
                        continue
                    lost = self._lost(run.run_id, name, task.attempt, now)
                    self._apply_run(lost, partition, table, changes)
        next_at = now + (SWEEP_AGAIN if more else self.sweep_every())
        changes.timers.append((partition, MarkersDue(partition), next_at))


def marker(run: Run) -> Run:
    """What is kept of a finished run: enough to refuse a duplicate trigger."""
    return Run(run.run_id, run.pipeline, {}, run.created_at, run.status, run.finished_at, {})
