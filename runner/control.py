"""The control processor: the single writer of the runs whose control partitions it owns.

It reads ``control`` in batches, folds each message into the ``RunTable`` and writes what
that changed and caused. What must always hold:

- the state changes of a batch (written to the compacted ``runs`` changelog, in the same
  partition as the run's control messages), the messages they cause (task requests,
  completion events, closed windows' runs) and the batch's consumer offsets commit in ONE
  Kafka transaction: a re-processed control message can cause nothing twice, and a
  completion is published exactly once per run (subscribers read ``read_committed``);
- on assignment a partition's table is restored before any of its control messages is
  applied: from its local store (``runs.store``) and the changelog after the store's
  checkpoint, or from the whole changelog when the store cannot be trusted; on any error
  the processor is restarted from scratch, so memory never runs ahead of what was
  committed, and the store is written only after a commit, with the changelog offset it
  has reached (a crash between the two is caught up from the changelog);
- observers and timers act only after the commit;
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
from typing import Any

import orjson
from aiokafka import TopicPartition
from aiokafka.structs import OffsetAndMetadata

from headwater.runner import metrics
from headwater.runner.envelope import epoch_iso, to_kafka
from headwater.runner.errors import BadMessage
from headwater.runner.log import kafka
from headwater.runner.log.lag import runs_metadata
from headwater.runner.log.records import (
    RunRequested,
    concerns,
    decode_control,
    dlq_record,
    encode_control,
    failed_run_record,
    record_origin,
)
from headwater.runner.model.pipeline import Pipeline
from headwater.runner.observe import hooks
from headwater.runner.observe.hooks import RunObserver
from headwater.runner.observe.lineage import run_start
from headwater.runner.observe.status import status_event
from headwater.runner.runs import changelog
from headwater.runner.runs.completion import completion_event
from headwater.runner.runs.flow import control_key
from headwater.runner.runs.standby import Standby
from headwater.runner.runs.store import open_store
from headwater.runner.runs.table import (
    Changes,
    Completed,
    Dispatched,
    Partition,
    Reported,
    RunTable,
    Stopped,
)
from headwater.runner.runs.timers import Timers
from headwater.runner.settings import Settings

log = logging.getLogger(__name__)


class ControlProcessor:
    def __init__(
        self,
        settings: Settings,
        pipelines: Mapping[str, Pipeline],
        observer: RunObserver,
        *,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._settings = settings
        self._topics = settings.topics
        self._pipelines = pipelines
        self._observer = observer
        self._table = RunTable(
            pipelines, settings.dedup_retention, clock, rand, settings.task_timeout
        )
        self._clock = clock
        self._lock = asyncio.Lock()
        self._restore_failure: BaseException | None = None
        self._standby: Standby | None = None

    async def run(self, stopping: asyncio.Event) -> None:
        self._restore_failure = None  # a restart restores every partition afresh
        topics = self._topics
        group = topics.group("control")
        consumer = kafka.consumer(self._settings, group=group)
        rebalance = kafka.Rebalance(revoked=self._revoked, assigned=self._assigned)
        consumer.subscribe([topics.control], listener=rebalance)
        # Timers and the restore's DLQ entries: a plain producer, a fresh one per restart
        # (an error can leave an idempotent producer's sequence state poisoned).
        self._producer = kafka.producer(self._settings)
        self._timers = Timers(self._producer, topics.control, self._clock)
        self._fencing = kafka.PartitionProducers(self._settings, f"{group}.p")
        self._standby = Standby(self._settings) if self._settings.standby else None
        following = asyncio.Event()
        standby = asyncio.create_task(self._standby.run(following)) if self._standby else None
        async with kafka.started(self._producer, consumer):
            try:
                while not stopping.is_set():
                    batch = await consumer.getmany(timeout_ms=200, max_records=2000)
                    if self._restore_failure is not None:
                        raise self._restore_failure  # start again from the changelog
                    if batch:
                        await self._process(batch, consumer)
            finally:
                self._timers.clear()
                self._table.clear()
                await self._fencing.close_all()
                if standby is not None:
                    following.set()
                    await asyncio.gather(standby, return_exceptions=True)

    async def _process(self, batch: dict[TopicPartition, list[Any]], consumer: Any) -> None:
        async with self._lock:
            # Records of a partition whose table is not (or no longer) here are not applied:
            # one still being restored is read again; one taken away by a rebalance while
            # this batch waited for the lock is left to its new owner.
            for tp, records in batch.items():
                if not self._table.has(tp.partition) and tp in consumer.assignment():
                    consumer.seek(tp, records[0].offset)
            batch = {tp: rs for tp, rs in batch.items() if self._table.has(tp.partition)}
            if not batch:
                await asyncio.sleep(0.05)  # a restore is under way: do not spin on re-reads
                return
            # One transaction per partition, by that partition's own producer: the
            # partition's next owner fences it, so a paused process that resumes cannot
            # commit what its successor already did.
            # Every transaction ends (commits or aborts) before an error leaves: a producer
            # is never closed under a transaction still in flight.
            done = await asyncio.gather(
                *(self._transact(tp, rs) for tp, rs in batch.items()), return_exceptions=True
            )
            for outcome in done:
                if not isinstance(outcome, BaseException):
                    self._after_commit(*outcome)
            for failure in done:
                if isinstance(failure, BaseException):
                    raise failure  # the table is restored from the changelog afresh

    async def _transact(
        self, tp: TopicPartition, records: list[Any]
    ) -> tuple[Changes, dict[int, list[Any]], dict[int, int]]:
        """One partition's transaction; returns what changed, its changelog records and
        the changelog offset after them (for the store's checkpoint)."""
        txn = self._fencing.producer(tp.partition)
        changes = Changes()
        writer = kafka.BatchWriter(txn)
        async with txn.transaction():
            for record in records:
                await self._apply(record, changes, writer)
            written = await self._write(changes, writer)
            # Every write acknowledged before the transaction commits: a refused one
            # aborts it, with the offsets.
            writes = await writer.flush()
            # The runs in progress ride with the offsets: the router's backpressure
            # reads them beside the control lag (``log.lag``).
            runs = runs_metadata(self._table.in_progress(tp.partition, changes))
            offsets = {tp: OffsetAndMetadata(records[-1].offset + 1, runs)}
            group, within = self._topics.group("control"), self._settings.kafka.write_timeout
            await kafka.offsets_in_transaction(txn, writes, offsets, group, within)
        # The changelog offset after this transaction's records (its commit marker comes
        # after them, and is skipped by a reader): the store's checkpoint.
        checkpoints = writer.ends(self._topics.runs)
        return changes, written, checkpoints

    async def _apply(self, record: Any, changes: Changes, writer: kafka.BatchWriter) -> None:
        try:
            message = decode_control(record.value)
        except BadMessage as exc:
            origin = record_origin(record)
            await writer.add(self._topics.dlq, dlq_record(str(exc), origin, record.value))
            metrics.DLQ_RECORDS.labels("control").inc()
            return
        problem = self._table.apply(record.partition, message, changes)
        if problem is not None:
            origin = record_origin(record, **concerns(message))
            await writer.add(self._topics.dlq, dlq_record(problem, origin, record.value))
            metrics.DLQ_RECORDS.labels("control").inc()

    async def _write(self, changes: Changes, writer: kafka.BatchWriter) -> dict[int, list[Any]]:
        """The batch's changelog records (in their control partition's changelog partition)
        and what it caused, in the order it arose; returns the changelog records."""
        topics = self._topics
        records = changes.changelog()
        for partition, written in records.items():
            for key, value, _ in written:
                await writer.add(topics.runs, value, key=key, partition=partition)
        for output in changes.outputs:
            match output:
                case Dispatched(route=route, run_id=run_id, value=value):
                    await writer.add(topics.tasks(route), value, key=run_id.encode())
                case Completed(run=run):
                    completion = completion_event(run, self._settings.egress_prices)
                    headers, value = to_kafka(completion)
                    await writer.add(
                        topics.completions, value, key=run.pipeline.encode(), headers=headers
                    )
                    if run.status == "failed":  # its last attempt failed: re-drivable
                        await writer.add(topics.dlq, failed_run_record(run, completion.data))
                        metrics.DLQ_RECORDS.labels("control").inc()
                case Stopped() as stopped:  # the workers running its attempts stop them
                    notice = orjson.dumps(
                        {
                            "run_id": stopped.run_id,
                            "pipeline": stopped.pipeline,
                            "tasks": list(stopped.tasks),
                            "reason": stopped.reason,
                        }
                    )
                    await writer.add(topics.cancels, notice, key=stopped.run_id.encode())
                case Reported(change=change):
                    instance = self._settings.instance
                    headers, value = to_kafka(status_event(change, instance, "control"))
                    await writer.add(topics.status, value, headers=headers)
                case RunRequested(run_id=run_id, pipeline=name, event=event):
                    pipeline = self._pipelines.get(name)  # a window's run: its group's key
                    key = (
                        run_id.encode()
                        if pipeline is None
                        else control_key(pipeline, event, run_id)
                    )
                    await writer.add(topics.control, encode_control(output), key=key)
        if self._settings.lineage:  # a run's lineage START, as it starts (its end: ``lineage``)
            for note in changes.notes:
                if note.hook == "started":
                    run = note.run
                    trigger = {k: run.event.get(k) for k in ("id", "source", "subject")}
                    start = run_start(run.run_id, run.pipeline, trigger, epoch_iso(run.created_at))
                    await writer.add(topics.lineage, orjson.dumps(start), key=run.run_id.encode())
        return records

    def _after_commit(
        self, changes: Changes, records: dict[int, list[Any]], offsets: dict[int, int]
    ) -> None:
        self._table.committed(changes, records, offsets)
        for partition, due, at in changes.timers:
            self._timers.arm(partition, due, at)
        for note in changes.notes:
            hooks.tell(self._observer, note)
        for line in changes.said:
            log.info("%s", line)

    # --- partition assignment ------------------------------------------------------------

    async def restore(self, partition: int) -> None:
        """Fence the partition's previous owner, then bring its local store up to date
        from the changelog, load its runs and windows and re-arm its timers."""
        await self._fencing.take(partition)  # its open transaction is aborted: read after
        if self._standby is not None:
            await self._standby.release(partition)  # its warm store: this restore's now
        async with self._lock:
            self._table.forget(partition)  # its store, if an earlier restore left it: closed
        store = open_store(self._settings.state_dir, self._topics.runs, partition)
        try:
            unreadable = await changelog.restore(self._settings, partition, store)
            restored = Partition.load(store)
        except BaseException:
            store.close()
            raise
        for record, reason in unreadable:  # kept in the DLQ, then deleted from the changelog
            entry = dlq_record(reason, record_origin(record), record.value, record.headers)
            await self._producer.send_and_wait(self._topics.dlq, entry)
            if record.key is not None:
                runs = self._topics.runs
                await self._producer.send_and_wait(runs, None, key=record.key, partition=partition)
        async with self._lock:
            self._timers.reset(partition)
            for due, at in self._table.restore(partition, restored):
                self._timers.arm(partition, due, at)
        log.debug(
            "partition %d: restored %d running run(s), %d open window(s)",
            partition,
            len(restored.runs),
            len(restored.windows),
        )

    async def _assigned(self, assigned: list[TopicPartition]) -> None:
        for tp in assigned:
            try:
                await self.restore(tp.partition)
            except Exception as exc:  # noqa: BLE001 - aiokafka would only log it
                # Never apply a partition's messages to a partial table: start afresh.
                log.warning("restoring the run table failed (%s: %s)", type(exc).__name__, exc)
                self._restore_failure = exc
                return

    async def _revoked(self, revoked: list[TopicPartition]) -> None:
        for tp in revoked:
            await self.forget(tp.partition)

    async def forget(self, partition: int) -> None:
        async with self._lock:
            self._table.forget(partition)
            self._timers.forget(partition)
            await self._fencing.close(partition)
        if self._standby is not None:
            self._standby.follow(partition)
