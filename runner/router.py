"""The event router: the per-event hot path from ``events`` to run requests.

Reads ``events`` in batches, matches each event against the trigger index and writes one
``run.requested`` control message per matched pipeline, keyed by the derived run id.
Offsets are committed only after every write of the batch was acknowledged, so an event
is never lost; a re-read event makes the same run id, which the run table deduplicates.
A record that is not a CloudEvent goes to the DLQ with the reason; the stream goes on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaProducer

from headwater.runner import kafka
from headwater.runner.envelope import from_kafka
from headwater.runner.errors import BadMessage
from headwater.runner.matching import TriggerIndex
from headwater.runner.messages import dlq_record, encode_control
from headwater.runner.pipeline import Pipeline
from headwater.runner.settings import Settings
from headwater.runner.state import RunRequested, run_id_for


class EventRouter:
    def __init__(
        self, settings: Settings, pipelines: Iterable[Pipeline], producer: AIOKafkaProducer
    ) -> None:
        self._settings = settings
        self._topics = settings.topics
        self._index = TriggerIndex(pipelines)
        self._producer = producer

    async def run(self, stopping: asyncio.Event) -> None:
        consumer = kafka.consumer(
            self._settings, self._topics.events, group=self._topics.group("router")
        )
        await consumer.start()
        try:
            while not stopping.is_set():
                batch = await consumer.getmany(timeout_ms=200, max_records=5000)
                if not batch:
                    continue
                writes = [
                    w for records in batch.values() for r in records for w in await self._route(r)
                ]
                await kafka.all_acknowledged(writes, self._settings.kafka.write_timeout)
                await consumer.commit({tp: rs[-1].offset + 1 for tp, rs in batch.items()})
        finally:
            await consumer.stop()

    async def _route(self, record: Any) -> list[asyncio.Future[Any]]:
        try:
            event = from_kafka(record.headers, record.value)
        except BadMessage as exc:
            origin = {"topic": record.topic, "partition": record.partition, "offset": record.offset}
            value = dlq_record(str(exc), origin, record.value, record.headers)
            return [await kafka.send(self._producer, self._topics.dlq, value)]
        writes = []
        for pipeline in self._index.match(event):
            run_id = run_id_for(pipeline.name, event.id, event.source)
            message = RunRequested(run_id, pipeline.name, event.to_dict())
            value = encode_control(message)
            writes.append(
                await kafka.send(self._producer, self._topics.control, value, key=run_id.encode())
            )
        return writes
