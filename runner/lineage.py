"""Lineage: each finished run's OpenLineage events on ``hw.lineage``.

One consumer group (``lineage``) reads ``completions`` and writes, per run, the RunEvents
``observe.lineage`` builds (START and COMPLETE/FAIL of the pipeline's job and of each
task's), keyed by run id, each write awaited before the offsets are committed; a
completion read again after a crash writes the same events again (same run ids: a
lineage backend keeps the latest state of each run).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import orjson

from headwater.runner.log import kafka
from headwater.runner.model.pipeline import Pipeline
from headwater.runner.observe.lineage import lineage_events
from headwater.runner.settings import Settings

log = logging.getLogger(__name__)


class Lineage:
    def __init__(self, settings: Settings, pipelines: Mapping[str, Pipeline]) -> None:
        self._settings = settings
        self._pipelines = pipelines

    async def run(self, stopping: asyncio.Event) -> None:
        topics = self._settings.topics
        consumer = kafka.consumer(self._settings, topics.completions, group=topics.group("lineage"))
        producer = kafka.producer(self._settings)
        async with kafka.started(consumer, producer):
            while not stopping.is_set():
                batch = await consumer.getmany(timeout_ms=500, max_records=500)
                sends = []
                for records in batch.values():
                    for record in records:
                        for event in self._events(record.value):
                            value = orjson.dumps(event)
                            key = event["run"]["runId"].encode()
                            sends.append(await producer.send(topics.lineage, value, key=key))
                await kafka.all_acknowledged(sends, self._settings.kafka.write_timeout)
                if batch:
                    offsets = {tp: records[-1].offset + 1 for tp, records in batch.items()}
                    await kafka.commit(consumer, offsets)

    def _events(self, value: bytes | None) -> list[dict[str, Any]]:
        try:
            completion = orjson.loads(value or b"")
            pipeline = self._pipelines.get(str(completion.get("pipeline")))
            outputs = {t.name: list(t.outputs) for t in pipeline.tasks} if pipeline else {}
            residency = {t.name: t.residency for t in pipeline.tasks} if pipeline else {}
            return lineage_events(completion, outputs, residency)
        except Exception as exc:  # noqa: BLE001 - a completion it cannot read: no lineage
            log.warning("lineage: a completion could not be turned into events (%s)", exc)
            return []
