"""The control processor: the single writer of the runs whose control partitions it owns.

It folds ``control`` messages into the run table with ``state.step`` and carries out the
effects. What must always hold:

- the state changes of a batch (written to the compacted ``runs`` changelog, in the same
  partition as the run's control messages), the messages they cause (task requests,
  completion events) and the batch's consumer offsets commit in ONE Kafka transaction:
  a re-processed control message can cause nothing twice, and a completion is published
  exactly once per run (subscribers read with ``isolation_level=read_committed``);
- on assignment a partition's table is restored from the changelog before any of its
  control messages is applied; on any error the processor is restarted from scratch, so
  memory never runs ahead of what was committed;
- observers and retry timers act only after the commit;
- a finished run is kept as a small marker (enough to refuse a duplicate trigger) for
  ``dedup_retention``; a sweep per partition (``MarkersDue``, at most every minute)
  deletes older markers from memory and, with tombstones, from the changelog;
- the transactional id is stable per instance (``HEADWATER_INSTANCE``), so a restarted
  process fences its dead predecessor and aborts the transaction it left open at once,
  instead of readers waiting at that transaction until it times out.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition

from headwater.runner import batching, kafka
from headwater.runner.batching import EventsBatched, Window, WindowDue
from headwater.runner.completion import completion_event
from headwater.runner.envelope import to_kafka
from headwater.runner.errors import BadMessage
from headwater.runner.hooks import RunObserver
from headwater.runner.messages import decode_control, dlq_record, encode_control
from headwater.runner.messages import encode_task_request as task_request
from headwater.runner.pipeline import Pipeline
from headwater.runner.settings import Settings
from headwater.runner.state import (
    Dispatch,
    Finish,
    MarkersDue,
    RetryDue,
    Run,
    RunRequested,
    ScheduleRetry,
    TaskFinished,
    expired_markers,
    step,
)

log = logging.getLogger(__name__)


WINDOW_PREFIX = "window:"  # changelog keys of batching windows; run ids are UUIDs
SWEEP_EVERY = 60.0  # seconds between sweeps of expired markers (less for short retentions)
Due = RetryDue | WindowDue | MarkersDue


@dataclass
class _Table:
    """What one control partition holds: its runs and its open batching windows."""

    runs: dict[str, Run] = field(default_factory=dict)
    windows: dict[str, Window] = field(default_factory=dict)


@dataclass
class _BatchOutcome:
    """What a batch changed, and what to do once its transaction committed."""

    runs: dict[str, Run] = field(default_factory=dict)
    windows: dict[str, Window | None] = field(default_factory=dict)
    notes: list[Callable[[], None]] = field(default_factory=list)
    timers: list[tuple[int, Due, float]] = field(default_factory=list)
    finished: list[tuple[int, Run]] = field(default_factory=list)
    dropped: list[tuple[int, str]] = field(default_factory=list)


class ControlProcessor:
    def __init__(
        self,
        settings: Settings,
        pipelines: Mapping[str, Pipeline],
        producer: AIOKafkaProducer,
        observer: RunObserver,
        *,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._settings = settings
        self._topics = settings.topics
        self._pipelines = pipelines
        self._producer = producer
        self._observer = observer
        self._clock = clock
        self._rand = rand
        self._tables: dict[int, _Table] = {}
        self._timers: dict[int, set[asyncio.TimerHandle]] = {}
        self._sweeps: dict[int, asyncio.TimerHandle] = {}
        self._lock = asyncio.Lock()
        self._restore_failure: BaseException | None = None
        self._background: set[asyncio.Task[None]] = set()

    async def run(self, stopping: asyncio.Event) -> None:
        topics = self._topics
        txn = kafka.transactional_producer(
            self._settings, f"{topics.group('control')}.{self._settings.instance}"
        )
        consumer = kafka.consumer(self._settings, group=topics.group("control"))
        consumer.subscribe([topics.control], listener=_Rebalance(self))
        await txn.start()
        try:
            await consumer.start()
            try:
                while not stopping.is_set():
                    batch = await consumer.getmany(timeout_ms=200, max_records=2000)
                    if self._restore_failure is not None:
                        raise self._restore_failure  # start again from the changelog
                    if batch:
                        await self._process(batch, txn, consumer)
            finally:
                await consumer.stop()
        finally:
            self._forget_all()
            await txn.stop()

    async def _process(
        self, batch: dict[TopicPartition, list[Any]], txn: Any, consumer: Any
    ) -> None:
        async with self._lock:
            # Records of a partition whose table is not (or no longer) here are not applied:
            # one still being restored is read again; one taken away by a rebalance while
            # this batch waited for the lock is left to its new owner.
            for tp, records in batch.items():
                if tp.partition not in self._tables and tp in consumer.assignment():
                    consumer.seek(tp, records[0].offset)
            batch = {tp: rs for tp, rs in batch.items() if tp.partition in self._tables}
            if not batch:
                await asyncio.sleep(0.05)  # a restore is under way: do not spin on re-reads
                return
            outcome = _BatchOutcome()
            writer = kafka.BatchWriter(txn)
            async with txn.transaction():
                for tp, records in batch.items():
                    outcome.runs, outcome.windows = {}, {}
                    table = self._tables[tp.partition]
                    for record in records:
                        await self._apply(record, table, outcome, writer)
                    await self._write_changes(tp.partition, outcome, writer)
                await writer.flush()
                offsets = {tp: records[-1].offset + 1 for tp, records in batch.items()}
                await txn.send_offsets_to_transaction(offsets, self._topics.group("control"))
            self._after_commit(outcome)

    async def _write_changes(
        self, partition: int, outcome: _BatchOutcome, writer: kafka.BatchWriter
    ) -> None:
        """Write one partition's changed runs and windows to its changelog partition."""
        runs_topic = self._topics.runs
        value: bytes | None
        for run in outcome.runs.values():
            value = orjson.dumps(run.to_json())
            await writer.add(runs_topic, value, key=run.run_id.encode(), partition=partition)
            if run.status != "running":
                outcome.finished.append((partition, run))
        for key, window in outcome.windows.items():
            value = None if window is None else orjson.dumps(window.to_json())
            await writer.add(
                runs_topic, value, key=(WINDOW_PREFIX + key).encode(), partition=partition
            )

    async def _apply(
        self, record: Any, table: _Table, outcome: _BatchOutcome, writer: kafka.BatchWriter
    ) -> None:
        origin = {"topic": record.topic, "partition": record.partition, "offset": record.offset}
        try:
            message = decode_control(record.value)
        except BadMessage as exc:
            await writer.add(self._topics.dlq, dlq_record(str(exc), origin, record.value))
            return
        if isinstance(message, MarkersDue):
            await self._sweep(record.partition, table, outcome, writer)
            return
        if isinstance(message, EventsBatched | WindowDue):
            problem = await self._apply_window(message, record.partition, table, outcome, writer)
            if problem is not None:
                origin["window"] = message.window
                await writer.add(self._topics.dlq, dlq_record(problem, origin, record.value))
            return
        problem = await self._apply_run(message, record.partition, table, outcome, writer)
        if problem is not None:
            origin["run_id"] = message.run_id
            await writer.add(self._topics.dlq, dlq_record(problem, origin, record.value))

    async def _apply_window(
        self,
        message: EventsBatched | WindowDue,
        partition: int,
        table: _Table,
        outcome: _BatchOutcome,
        writer: kafka.BatchWriter,
    ) -> str | None:
        """Fold a batching message into its window; returns why it cannot be applied."""
        window = table.windows.get(message.window)
        if isinstance(message, EventsBatched):
            name, position = message.pipeline, message.trigger
        elif window is not None and window.opened_at == message.opened_at:
            name, position = window.pipeline, window.trigger
        else:
            return None  # the timer of a window that closed already
        pipeline = self._pipelines.get(name)
        spec = pipeline.batch_of(position) if pipeline else None
        if spec is None:
            return f"pipeline {name!r} has no batching trigger #{position} in this runner"
        if isinstance(message, EventsBatched):
            fold = batching.add(window, message, spec, self._clock())
        else:
            fold = batching.due(window, message, spec, self._clock())
        if fold.window is None:
            table.windows.pop(message.window, None)
        else:
            table.windows[message.window] = fold.window
        if fold.window is not window or isinstance(message, EventsBatched):
            outcome.windows[message.window] = fold.window
        if fold.window is not None and fold.check_at is not None:
            due = WindowDue(message.window, fold.window.opened_at)
            outcome.timers.append((partition, due, fold.check_at))
        for request in fold.runs:
            # The run lives in the partition of its id, like any run: request it there.
            value = encode_control(request)
            await writer.add(self._topics.control, value, key=request.run_id.encode())
        return None

    async def _apply_run(
        self,
        message: RunRequested | TaskFinished | RetryDue,
        partition: int,
        table: _Table,
        outcome: _BatchOutcome,
        writer: kafka.BatchWriter,
    ) -> str | None:
        """Step one run; returns why the message cannot be applied."""
        run = table.runs.get(message.run_id)
        name = message.pipeline if isinstance(message, RunRequested) else run and run.pipeline
        pipeline = self._pipelines.get(name) if name else None
        if pipeline is None:
            if isinstance(message, RunRequested):
                return f"pipeline {message.pipeline!r} is not loaded by this runner"
            return f"run {message.run_id} is not in the run table"
        transition = step(run, message, pipeline, self._clock(), self._rand())
        new = transition.run
        if not transition.applied or new is None:
            return None
        table.runs[new.run_id] = outcome.runs[new.run_id] = new
        if run is None:
            outcome.notes.append(lambda: self._observer.run_started(new))
        if isinstance(message, TaskFinished) and message.task in new.tasks:
            record_ = new.tasks[message.task]
            outcome.notes.append(lambda: self._observer.task_finished(new, message.task, record_))
        for effect in transition.effects:
            match effect:
                case Dispatch(task=task_name, attempt=attempt):
                    task = pipeline.task(task_name)
                    value = task_request(
                        new.run_id,
                        new.pipeline,
                        task_name,
                        attempt,
                        new.event,
                        new.upstream_outputs(pipeline, task_name),
                    )
                    await writer.add(self._topics.tasks(task.route), value, key=new.run_id.encode())
                case ScheduleRetry(task=task_name, attempt=attempt, at=at):
                    due = RetryDue(new.run_id, task_name, attempt)
                    outcome.timers.append((partition, due, at))
                case Finish():
                    headers, value = to_kafka(completion_event(new))
                    await writer.add(
                        self._topics.completions, value, key=new.pipeline.encode(), headers=headers
                    )
                    outcome.notes.append(lambda: self._observer.run_finished(new))
        return None

    async def _sweep(
        self, partition: int, table: _Table, outcome: _BatchOutcome, writer: kafka.BatchWriter
    ) -> None:
        """Tombstone the partition's expired markers (dropped from memory after the commit),
        and arm the next sweep."""
        now = self._clock()
        for run_id in expired_markers(table.runs, now, self._settings.dedup_retention):
            await writer.add(self._topics.runs, None, key=run_id.encode(), partition=partition)
            outcome.dropped.append((partition, run_id))
        outcome.timers.append((partition, MarkersDue(partition), now + self._sweep_every()))

    def _sweep_every(self) -> float:
        return min(SWEEP_EVERY, self._settings.dedup_retention / 4)

    def _after_commit(self, outcome: _BatchOutcome) -> None:
        for partition, run in outcome.finished:
            # A finished run is kept only as a marker: enough to refuse a duplicate trigger.
            self._tables[partition].runs[run.run_id] = _marker(run)
        for partition, run_id in outcome.dropped:
            self._tables[partition].runs.pop(run_id, None)
        for partition, due, at in outcome.timers:
            self._arm(partition, due, at)
        for note in outcome.notes:
            note()

    # --- timers: retries and batching windows --------------------------------------------

    def _arm(self, partition: int, due: Due, at: float) -> None:
        delay = max(0.0, at - self._clock())
        handles = self._timers.setdefault(partition, set())
        handle = asyncio.get_running_loop().call_later(delay, self._fire, partition, due)
        handles.add(handle)
        if isinstance(due, MarkersDue):  # one sweep timer per partition, also after a replay
            previous = self._sweeps.get(partition)
            if previous is not None:
                previous.cancel()
                handles.discard(previous)
            self._sweeps[partition] = handle

    def _fire(self, partition: int, due: Due) -> None:
        task = asyncio.ensure_future(self._send_due(partition, due))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _send_due(self, partition: int, due: Due) -> None:
        value = encode_control(due)
        try:
            if isinstance(due, MarkersDue):  # for the partition itself, not for a key
                await self._producer.send_and_wait(self._topics.control, value, partition=partition)
            else:
                key = due.window if isinstance(due, WindowDue) else due.run_id
                await self._producer.send_and_wait(self._topics.control, value, key=key.encode())
        except Exception:  # noqa: BLE001 - Kafka unavailable: try again shortly
            log.warning("could not publish %s; trying again", due)
            if partition in self._timers:
                self._arm(partition, due, self._clock() + 1.0)

    # --- partition assignment ------------------------------------------------------------

    async def restore(self, partition: int) -> None:
        """Load a partition's runs and windows from the changelog and re-arm its timers."""
        table = await _read_changelog(self._settings, self._topics.runs, partition)
        async with self._lock:
            self._tables[partition] = table
            for handle in self._timers.pop(partition, set()):
                handle.cancel()
            self._timers[partition] = set()
            for run in table.runs.values():
                for name, task in run.tasks.items():
                    if run.status == "running" and task.status == "retry_wait":
                        due = RetryDue(run.run_id, name, task.attempt)
                        self._arm(partition, due, task.retry_at or self._clock())
            for window in table.windows.values():
                pipeline = self._pipelines.get(window.pipeline)
                spec = pipeline.batch_of(window.trigger) if pipeline else None
                if spec is not None:
                    self._arm(
                        partition, WindowDue(window.window, window.opened_at), window.deadline(spec)
                    )
            self._arm(partition, MarkersDue(partition), self._clock() + self._sweep_every())
        log.debug(
            "partition %d: restored %d run(s), %d window(s)",
            partition,
            len(table.runs),
            len(table.windows),
        )

    def restore_failed(self, exc: BaseException) -> None:
        """A partition could not be restored: never apply its messages to a partial table;
        the processor stops and starts again from scratch."""
        log.warning("restoring the run table failed (%s: %s)", type(exc).__name__, exc)
        self._restore_failure = exc

    async def forget(self, partition: int) -> None:
        async with self._lock:
            self._tables.pop(partition, None)
            self._sweeps.pop(partition, None)
            for handle in self._timers.pop(partition, set()):
                handle.cancel()

    def _forget_all(self) -> None:
        for handles in self._timers.values():
            for handle in handles:
                handle.cancel()
        self._timers.clear()
        self._sweeps.clear()
        self._tables.clear()


def _marker(run: Run) -> Run:
    return Run(run.run_id, run.pipeline, {}, run.created_at, run.status, run.finished_at, {})


async def _read_changelog(settings: Settings, topic: str, partition: int) -> _Table:
    """A partition's table from its changelog (expired markers too: the first sweep after
    the restore deletes them)."""
    tp = TopicPartition(topic, partition)
    reader = kafka.consumer(settings, group=None)
    await reader.start()
    try:
        reader.assign([tp])
        await reader.seek_to_beginning(tp)
        end = (await reader.end_offsets([tp]))[tp]
        table = _Table()
        while await reader.position(tp) < end:
            batch = await reader.getmany(tp, timeout_ms=500, max_records=5000)
            for record in batch.get(tp, ()):
                key = record.key.decode()
                if key.startswith(WINDOW_PREFIX):
                    key = key[len(WINDOW_PREFIX) :]
                    if record.value is None:
                        table.windows.pop(key, None)
                    else:
                        table.windows[key] = Window.from_json(orjson.loads(record.value))
                elif record.value is None:
                    table.runs.pop(key, None)
                else:
                    run = Run.from_json(orjson.loads(record.value))
                    table.runs[run.run_id] = _marker(run) if run.status != "running" else run
        return table
    finally:
        await reader.stop()


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, processor: ControlProcessor) -> None:
        self._processor = processor

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        for tp in revoked:
            await self._processor.forget(tp.partition)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        for tp in assigned:
            try:
                await self._processor.restore(tp.partition)
            except Exception as exc:  # noqa: BLE001 - aiokafka would only log it
                self._processor.restore_failed(exc)
                return
