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

from headwater.runner import kafka
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
    RetryDue,
    Run,
    RunRequested,
    ScheduleRetry,
    TaskFinished,
    step,
)

log = logging.getLogger(__name__)


@dataclass
class _BatchOutcome:
    """What to do once a batch's transaction committed."""

    notes: list[Callable[[], None]] = field(default_factory=list)
    retries: list[tuple[int, RetryDue, float]] = field(default_factory=list)
    finished: list[tuple[int, Run]] = field(default_factory=list)


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
        self._runs: dict[int, dict[str, Run]] = {}
        self._timers: dict[int, set[asyncio.TimerHandle]] = {}
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
                if tp.partition not in self._runs and tp in consumer.assignment():
                    consumer.seek(tp, records[0].offset)
            batch = {tp: records for tp, records in batch.items() if tp.partition in self._runs}
            if not batch:
                return
            outcome = _BatchOutcome()
            async with txn.transaction():
                for tp, records in batch.items():
                    changed: dict[str, Run] = {}
                    runs = self._runs[tp.partition]
                    for record in records:
                        await self._apply(record, runs, changed, outcome, txn)
                    for run in changed.values():
                        await txn.send(
                            self._topics.runs,
                            orjson.dumps(run.to_json()),
                            key=run.run_id.encode(),
                            partition=tp.partition,
                        )
                        if run.status != "running":
                            outcome.finished.append((tp.partition, run))
                offsets = {tp: records[-1].offset + 1 for tp, records in batch.items()}
                await txn.send_offsets_to_transaction(offsets, self._topics.group("control"))
            self._after_commit(outcome)

    async def _apply(
        self,
        record: Any,
        runs: dict[str, Run],
        changed: dict[str, Run],
        outcome: _BatchOutcome,
        txn: Any,
    ) -> None:
        try:
            message = decode_control(record.value)
        except BadMessage as exc:
            origin = {"topic": record.topic, "partition": record.partition, "offset": record.offset}
            await txn.send(self._topics.dlq, dlq_record(str(exc), origin, record.value))
            return
        run = runs.get(message.run_id)
        name = message.pipeline if isinstance(message, RunRequested) else run and run.pipeline
        pipeline = self._pipelines.get(name) if name else None
        if pipeline is None:
            if isinstance(message, RunRequested):
                reason = f"pipeline {message.pipeline!r} is not loaded by this runner"
            else:
                reason = f"run {message.run_id} is not in the run table"
            origin = {
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
                "run_id": message.run_id,
            }
            await txn.send(self._topics.dlq, dlq_record(reason, origin, record.value))
            return
        transition = step(run, message, pipeline, self._clock(), self._rand())
        new = transition.run
        if not transition.applied or new is None:
            return
        runs[new.run_id] = changed[new.run_id] = new
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
                    await txn.send(self._topics.tasks(task.route), value, key=new.run_id.encode())
                case ScheduleRetry(task=task_name, attempt=attempt, at=at):
                    due = RetryDue(new.run_id, task_name, attempt)
                    outcome.retries.append((record.partition, due, at))
                case Finish():
                    headers, value = to_kafka(completion_event(new))
                    await txn.send(
                        self._topics.completions, value, key=new.pipeline.encode(), headers=headers
                    )
                    outcome.notes.append(lambda: self._observer.run_finished(new))

    def _after_commit(self, outcome: _BatchOutcome) -> None:
        for partition, run in outcome.finished:
            # A finished run is kept only as a marker: enough to refuse a duplicate trigger.
            self._runs[partition][run.run_id] = _marker(run)
        for partition, due, at in outcome.retries:
            self._arm(partition, due, at)
        for note in outcome.notes:
            note()

    # --- retry timers --------------------------------------------------------------------

    def _arm(self, partition: int, due: RetryDue, at: float) -> None:
        delay = max(0.0, at - self._clock())
        handles = self._timers.setdefault(partition, set())
        handle = asyncio.get_running_loop().call_later(delay, self._fire, partition, due)
        handles.add(handle)

    def _fire(self, partition: int, due: RetryDue) -> None:
        task = asyncio.ensure_future(self._send_due(partition, due))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _send_due(self, partition: int, due: RetryDue) -> None:
        try:
            await self._producer.send_and_wait(
                self._topics.control, encode_control(due), key=due.run_id.encode()
            )
        except Exception:  # noqa: BLE001 - Kafka unavailable: try again shortly
            log.warning("could not publish retry of %s/%s; trying again", due.run_id, due.task)
            if partition in self._timers:
                self._arm(partition, due, self._clock() + 1.0)

    # --- partition assignment ------------------------------------------------------------

    async def restore(self, partition: int) -> None:
        """Load a partition's runs from the changelog and re-arm their retry timers."""
        runs = await _read_changelog(self._settings, self._topics.runs, partition)
        async with self._lock:
            self._runs[partition] = runs
            for handle in self._timers.pop(partition, set()):
                handle.cancel()
            self._timers[partition] = set()
            for run in runs.values():
                for name, task in run.tasks.items():
                    if run.status == "running" and task.status == "retry_wait":
                        due = RetryDue(run.run_id, name, task.attempt)
                        self._arm(partition, due, task.retry_at or self._clock())
        log.debug("partition %d: restored %d run(s)", partition, len(runs))

    def restore_failed(self, exc: BaseException) -> None:
        """A partition could not be restored: never apply its messages to a partial table;
        the processor stops and starts again from scratch."""
        log.warning("restoring the run table failed (%s: %s)", type(exc).__name__, exc)
        self._restore_failure = exc

    async def forget(self, partition: int) -> None:
        async with self._lock:
            self._runs.pop(partition, None)
            for handle in self._timers.pop(partition, set()):
                handle.cancel()

    def _forget_all(self) -> None:
        for handles in self._timers.values():
            for handle in handles:
                handle.cancel()
        self._timers.clear()
        self._runs.clear()


def _marker(run: Run) -> Run:
    return Run(run.run_id, run.pipeline, {}, run.created_at, run.status, run.finished_at, {})


async def _read_changelog(settings: Settings, topic: str, partition: int) -> dict[str, Run]:
    tp = TopicPartition(topic, partition)
    reader = kafka.consumer(settings, group=None)
    await reader.start()
    try:
        reader.assign([tp])
        await reader.seek_to_beginning(tp)
        end = (await reader.end_offsets([tp]))[tp]
        runs: dict[str, Run] = {}
        while await reader.position(tp) < end:
            batch = await reader.getmany(tp, timeout_ms=500, max_records=5000)
            for record in batch.get(tp, ()):
                if record.value is None:
                    runs.pop(record.key.decode(), None)
                    continue
                run = Run.from_json(orjson.loads(record.value))
                runs[run.run_id] = _marker(run) if run.status != "running" else run
        return runs
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
