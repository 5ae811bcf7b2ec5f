"""The event router: the per-event hot path from ``events`` to the control log.

Reads ``events`` (and ``completions``, when a pipeline is triggered by another's runs:
a completion is a CloudEvent like any other, its id the upstream run's) in batches and
matches each event against the trigger index. A per-event trigger writes one
``run.requested`` control message keyed by the derived run id; a batching trigger's
events are gathered per window and written as one ``events.batched`` message per window
(split when large), keyed by the window. A record that is not a CloudEvent goes to the
DLQ with the reason; the stream goes on.

A fetched batch that feeds a batching window or a join commits its writes and its consumer
offsets in one Kafka transaction, so a re-read event (after a crash or a rebalance) is never
written twice and a window counts each event once; the transactional id is stable per
instance, so a restarted router fences the transaction its dead predecessor left open. A
batch of per-event run requests only is written, acknowledged, then committed: a re-read
makes the same run ids, which the run table deduplicates, and it skips a transaction's round
trips.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import TopicPartition

from headwater.runner import metrics
from headwater.runner.envelope import CloudEvent, from_kafka
from headwater.runner.errors import BadMessage, RecordTooLarge
from headwater.runner.flow.pressure import PENDING_RUNS, Valve
from headwater.runner.log import kafka
from headwater.runner.log.records import (
    EventsBatched,
    EventsJoined,
    RunRequested,
    dlq_record,
    encode_control,
    record_origin,
)
from headwater.runner.model.matching import Match, TriggerIndex, completion_trigger
from headwater.runner.model.pipeline import Pipeline
from headwater.runner.runs.flow import control_key, keyed_apart
from headwater.runner.runs.joins import join_key
from headwater.runner.runs.machine import run_id_for
from headwater.runner.runs.windows import MAX_BYTES, key_value, window_key
from headwater.runner.settings import Settings

FETCH_RECORDS = 5000


class EventRouter:
    def __init__(
        self, settings: Settings, pipelines: Iterable[Pipeline], valve: Valve | None = None
    ) -> None:
        self._settings = settings
        self._topics = settings.topics
        pipelines = list(pipelines)
        self._index = TriggerIndex(pipelines)
        self._valve = valve
        # Completions are read only when a pipeline is triggered by another's.
        self._read = [settings.topics.events]
        if any(completion_trigger(t) for p in pipelines for t in p.triggers):
            self._read.append(settings.topics.completions)

    async def run(self, stopping: asyncio.Event) -> None:
        topics = self._topics
        txn = kafka.transactional_producer(
            self._settings, f"{topics.group('router')}.{self._settings.instance}"
        )
        plain = kafka.producer(self._settings)
        consumer = kafka.consumer(self._settings, *self._read, group=topics.group("router"))
        async with kafka.started(txn, plain, consumer):
            writers = kafka.BatchWriter(plain), kafka.BatchWriter(txn)
            while not stopping.is_set():
                self._pause_unless_open(consumer)
                batch = await consumer.getmany(timeout_ms=200, max_records=FETCH_RECORDS)
                if batch:
                    await self._route(batch, consumer, txn, writers)

    def _pause_unless_open(self, consumer: Any) -> None:
        """While the work downstream is over its bounds (``backpressure``), the events
        partitions are paused (again after a rebalance): the flood stays in the log."""
        if self._valve is not None and not self._valve.is_open:
            consumer.pause(*consumer.assignment())
        elif consumer.paused():
            consumer.resume(*consumer.paused())

    async def _route(
        self,
        batch: dict[TopicPartition, list[Any]],
        consumer: Any,
        txn: Any,
        writers: tuple[kafka.BatchWriter, kafka.BatchWriter],
    ) -> None:
        writes, windows = self._plan(batch)
        offsets = {tp: records[-1].offset + 1 for tp, records in batch.items()}
        for tp, records in batch.items():
            metrics.EVENTS_ROUTED.labels(tp.topic).inc(len(records))
        if self._valve is not None:  # counted before the next look at the lags does
            self._valve.add(PENDING_RUNS, len(writes) + windows.count())
        if windows.empty():
            # Run requests only: a re-read after a crash makes the same run ids, which the
            # run table deduplicates, so acknowledged writes then a commit are enough.
            writer = writers[0]
            await self._add_all(writer, writes)
            await kafka.all_acknowledged(await writer.flush(), self._settings.kafka.write_timeout)
            await kafka.commit(consumer, offsets)
            return
        writer = writers[1]
        async with txn.transaction():  # a batching window must count each event once
            await self._add_all(writer, writes)
            for key, message in windows.messages():
                value = encode_control(message)
                await writer.add(self._topics.control, value, key=key.encode())
            # Every write acknowledged before the transaction commits: a refused one
            # aborts it, with the offsets.
            group, within = self._topics.group("router"), self._settings.kafka.write_timeout
            await kafka.offsets_in_transaction(txn, await writer.flush(), offsets, group, within)

    async def _add_all(self, writer: kafka.BatchWriter, writes: list[_Write]) -> None:
        """Add the batch's writes; a run request too large for Kafka (its event nearly
        is) goes to the DLQ instead, with the reason."""
        for topic, value, key, headers in writes:
            try:
                await writer.add(topic, value, key=key, headers=headers)
            except RecordTooLarge as exc:
                origin = {"topic": topic, "key": (key or b"").decode("utf-8", "replace")}
                entry = dlq_record(f"run request not written: {exc}", origin, value)
                await writer.add(self._topics.dlq, entry)
                metrics.DLQ_RECORDS.labels("router").inc()

    def _plan(self, batch: dict[TopicPartition, list[Any]]) -> tuple[list[_Write], _Windows]:
        """The writes a fetched batch causes: run requests and DLQ records, and the events
        gathered per batching window."""
        writes: list[_Write] = []
        windows = _Windows()
        requested: dict[str, int] = {}  # counted per batch: metrics stay off the per-event path
        for records in batch.values():
            for record in records:
                headers = record.headers
                try:
                    event = from_kafka(headers, record.value)
                except Exception as exc:  # noqa: BLE001 - no record may stop the stream
                    reason = str(exc) if isinstance(exc, BadMessage) else _undecodable(exc)
                    origin = record_origin(record)
                    value = dlq_record(
                        reason, origin, record.value, record.headers, {"to": "events"}
                    )
                    writes.append((self._topics.dlq, value, None, None))
                    metrics.DLQ_RECORDS.labels("router").inc()
                    continue
                for match in self._index.matches(event):
                    if match.pipeline.joins(match.trigger.id):
                        size = kafka.record_size(None, record.value, headers)
                        missing = windows.join(match, event, size)
                        if missing is not None:
                            origin = record_origin(record, pipeline=match.pipeline.name)
                            value = dlq_record(missing, origin, record.value, record.headers)
                            writes.append((self._topics.dlq, value, None, None))
                            metrics.DLQ_RECORDS.labels("router").inc()
                    elif match.trigger.batch is None:
                        writes.append(self._run_request(match.pipeline, event))
                        name = match.pipeline.name
                        requested[name] = requested.get(name, 0) + 1
                    else:
                        windows.add(match, event, kafka.record_size(None, record.value, headers))
        for name, count in requested.items():
            metrics.RUNS_REQUESTED.labels(name).inc(count)
        return writes, windows

    def _run_request(self, pipeline: Pipeline, event: CloudEvent) -> _Write:
        run_id = run_id_for(pipeline.name, event.id, event.source)
        data = event.to_dict()
        value = encode_control(RunRequested(run_id, pipeline.name, data))
        if not keyed_apart(pipeline, data):
            return self._topics.control, value, run_id.encode(), None
        return self._topics.control, value, control_key(pipeline, data, run_id), None


_Write = tuple[str, bytes, bytes | None, list[tuple[str, bytes]] | None]


def _undecodable(exc: Exception) -> str:
    return f"record cannot be read as a CloudEvent ({type(exc).__name__}: {exc})"


@dataclass
class _Gathered:
    match: Match
    key: str | None
    chunks: list[list[dict[str, Any]]] = field(default_factory=lambda: [[]])
    chunk_size: int = 0


class _Windows:
    """The events of one fetched batch, gathered per batching window (and per join and
    trigger). A window's events are split into messages of at most about
    ``MAX_BYTES / 2``, so each fits in a Kafka message with room to spare."""

    def __init__(self) -> None:
        self._gathered: dict[str, _Gathered] = {}
        self._joined: dict[tuple[str, str], _Gathered] = {}

    def join(self, match: Match, event: CloudEvent, size: int) -> str | None:
        """Gather an event of a join's trigger; returns why it cannot join, if so."""
        spec = match.pipeline.join
        assert spec is not None
        key = key_value(event, spec.key)
        if key is None:
            return (
                f"pipeline {match.pipeline.name!r} joins its trigger {match.trigger.id!r} "
                f"on {spec.key}, which this event does not have"
            )
        joined = join_key(match.pipeline.name, spec.id, key)
        gathered = self._joined.get((joined, match.trigger.id))
        if gathered is None:
            gathered = self._joined[(joined, match.trigger.id)] = _Gathered(match, key)
        _gather(gathered, event, size)
        return None

    def add(self, match: Match, event: CloudEvent, size: int) -> None:
        assert match.trigger.batch is not None
        key = key_value(event, match.trigger.batch.key)
        window = window_key(match.pipeline.name, match.trigger.id, key)
        gathered = self._gathered.get(window)
        if gathered is None:
            gathered = self._gathered[window] = _Gathered(match, key)
        _gather(gathered, event, size)

    def empty(self) -> bool:
        return not self._gathered and not self._joined

    def count(self) -> int:
        everything = [*self._gathered.values(), *self._joined.values()]
        return sum(len(gathered.chunks) for gathered in everything)

    def messages(self) -> Iterable[tuple[str, EventsBatched | EventsJoined]]:
        """Each message with its Kafka key (its window's, or its join's)."""
        for window, gathered in self._gathered.items():
            name, trigger = gathered.match.pipeline.name, gathered.match.trigger.id
            for events in gathered.chunks:
                yield window, EventsBatched(window, name, trigger, gathered.key, events)
        for (joined, trigger), gathered in self._joined.items():
            name, key = gathered.match.pipeline.name, gathered.key
            assert key is not None
            for events in gathered.chunks:
                yield joined, EventsJoined(joined, name, trigger, key, events)


def _gather(gathered: _Gathered, event: CloudEvent, size: int) -> None:
    if gathered.chunks[-1] and gathered.chunk_size + size > MAX_BYTES // 2:
        gathered.chunks.append([])
        gathered.chunk_size = 0
    gathered.chunks[-1].append(event.to_dict())
    gathered.chunk_size += size
