"""The event router: the per-event hot path from ``events`` to the control log.

Reads ``events`` in batches and matches each event against the trigger index. A
per-event trigger writes one ``run.requested`` control message keyed by the derived run
id; a batching trigger's events are gathered per window and written as one
``events.batched`` message per window (split when large), keyed by the window. A record
that is not a CloudEvent goes to the DLQ with the reason; the stream goes on.

Each fetched batch's writes and its consumer offsets commit in one Kafka transaction, so
a re-read event (after a crash or a rebalance) is never written twice: batching windows
count each event once. The transactional id is stable per instance, so a restarted
router fences the transaction its dead predecessor left open.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import TopicPartition

from headwater.runner import kafka
from headwater.runner.batching import MAX_BYTES, EventsBatched, key_value, window_key
from headwater.runner.envelope import CloudEvent, from_kafka
from headwater.runner.errors import BadMessage
from headwater.runner.matching import Match, TriggerIndex
from headwater.runner.messages import dlq_record, encode_control
from headwater.runner.pipeline import Pipeline
from headwater.runner.settings import Settings
from headwater.runner.state import RunRequested, run_id_for

FETCH_RECORDS = 5000


class EventRouter:
    def __init__(self, settings: Settings, pipelines: Iterable[Pipeline]) -> None:
        self._settings = settings
        self._topics = settings.topics
        self._index = TriggerIndex(pipelines)

    async def run(self, stopping: asyncio.Event) -> None:
        topics = self._topics
        txn = kafka.transactional_producer(
            self._settings, f"{topics.group('router')}.{self._settings.instance}"
        )
        consumer = kafka.consumer(self._settings, topics.events, group=topics.group("router"))
        await txn.start()
        try:
            await consumer.start()
            try:
                writer = kafka.BatchWriter(txn)
                while not stopping.is_set():
                    batch = await consumer.getmany(timeout_ms=200, max_records=FETCH_RECORDS)
                    if batch:
                        await self._route(batch, txn, writer)
            finally:
                await consumer.stop()
        finally:
            await txn.stop()

    async def _route(
        self, batch: dict[TopicPartition, list[Any]], txn: Any, writer: kafka.BatchWriter
    ) -> None:
        windows = _Windows()
        async with txn.transaction():
            for records in batch.values():
                for record in records:
                    try:
                        event = from_kafka(record.headers, record.value)
                    except BadMessage as exc:
                        await self._dead_letter(record, str(exc), writer)
                        continue
                    for match in self._index.matches(event):
                        if match.trigger.batch is None:
                            await self._request_run(match.pipeline, event, writer)
                        else:
                            windows.add(match, event, len(record.value or b""))
            for message in windows.messages():
                await writer.add(
                    self._topics.control, encode_control(message), key=message.window.encode()
                )
            await writer.flush()
            offsets = {tp: records[-1].offset + 1 for tp, records in batch.items()}
            await txn.send_offsets_to_transaction(offsets, self._topics.group("router"))

    async def _request_run(
        self, pipeline: Pipeline, event: CloudEvent, writer: kafka.BatchWriter
    ) -> None:
        run_id = run_id_for(pipeline.name, event.id, event.source)
        value = encode_control(RunRequested(run_id, pipeline.name, event.to_dict()))
        await writer.add(self._topics.control, value, key=run_id.encode())

    async def _dead_letter(self, record: Any, reason: str, writer: kafka.BatchWriter) -> None:
        origin = {"topic": record.topic, "partition": record.partition, "offset": record.offset}
        await writer.add(self._topics.dlq, dlq_record(reason, origin, record.value, record.headers))


@dataclass
class _Gathered:
    match: Match
    key: str | None
    chunks: list[list[dict[str, Any]]] = field(default_factory=lambda: [[]])
    chunk_size: int = 0


class _Windows:
    """The events of one fetched batch, gathered per batching window. A window's events
    are split into messages of at most about ``MAX_BYTES / 2``, so each fits in a Kafka
    message with room to spare."""

    def __init__(self) -> None:
        self._gathered: dict[str, _Gathered] = {}

    def add(self, match: Match, event: CloudEvent, size: int) -> None:
        assert match.trigger.batch is not None
        key = key_value(event, match.trigger.batch.key)
        window = window_key(match.pipeline.name, match.position, key)
        gathered = self._gathered.get(window)
        if gathered is None:
            gathered = self._gathered[window] = _Gathered(match, key)
        if gathered.chunks[-1] and gathered.chunk_size + size > MAX_BYTES // 2:
            gathered.chunks.append([])
            gathered.chunk_size = 0
        gathered.chunks[-1].append(event.to_dict())
        gathered.chunk_size += size

    def messages(self) -> Iterable[EventsBatched]:
        for window, gathered in self._gathered.items():
            name, position = gathered.match.pipeline.name, gathered.match.position
            for events in gathered.chunks:
                yield EventsBatched(window, name, position, gathered.key, events)
