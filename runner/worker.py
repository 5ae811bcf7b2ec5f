"""Workers: execute task requests of one route and report results to ``control``.

Workers are stateless. A request's offset is committed only after its result was written
to ``control``; a worker that dies re-executes its uncommitted requests on restart, and
the run state machine ignores a result that was already counted. Tasks of one fetched
batch (up to ``FETCH_RECORDS`` requests) run concurrently, at most ``concurrency`` at a time;
their results go out as one batch of writes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaProducer

from headwater.runner import kafka
from headwater.runner.errors import BadMessage, TaskFailed
from headwater.runner.messages import decode_task_request, dlq_record, encode_control
from headwater.runner.pipeline import Pipeline
from headwater.runner.settings import Settings
from headwater.runner.state import TaskFinished
from headwater.runner.tasks import TaskContext, execute

log = logging.getLogger(__name__)
FETCH_RECORDS = 500


class Worker:
    def __init__(
        self,
        settings: Settings,
        pipelines: Mapping[str, Pipeline],
        producer: AIOKafkaProducer,
        route: str = "default",
        concurrency: int = 32,
    ) -> None:
        self._settings = settings
        self._topics = settings.topics
        self._pipelines = pipelines
        self._producer = producer
        self._route = route
        self._concurrency = concurrency

    async def run(self, stopping: asyncio.Event) -> None:
        consumer = kafka.consumer(
            self._settings,
            self._topics.tasks(self._route),
            group=self._topics.group(f"workers.{self._route}"),
            max_poll_interval_ms=3_600_000,
        )
        writer = kafka.BatchWriter(self._producer)  # a restart starts with nothing half-added
        await consumer.start()
        try:
            while not stopping.is_set():
                batch = await consumer.getmany(timeout_ms=200, max_records=FETCH_RECORDS)
                records = [record for records in batch.values() for record in records]
                if not records:
                    continue
                slots = asyncio.Semaphore(self._concurrency)
                results = await asyncio.gather(*(self._attempt(r, slots) for r in records))
                for topic, value, key in results:
                    await writer.add(topic, value, key=key)
                writes = await writer.flush()
                await kafka.all_acknowledged(writes, self._settings.kafka.write_timeout)
                await kafka.commit(consumer, {tp: rs[-1].offset + 1 for tp, rs in batch.items()})
        finally:
            await consumer.stop()

    async def _attempt(
        self, record: Any, slots: asyncio.Semaphore
    ) -> tuple[str, bytes, bytes | None]:
        """Execute one request; returns the write (topic, value, key) that reports it."""
        try:
            request = decode_task_request(record.value)
            pipeline = self._pipelines.get(request["pipeline"])
            if pipeline is None:
                raise BadMessage(f"pipeline {request['pipeline']!r} is not loaded by this worker")
            task = pipeline.task(request["task"])
        except (BadMessage, KeyError) as exc:
            origin = {"topic": record.topic, "partition": record.partition, "offset": record.offset}
            reason = exc.args[0] if isinstance(exc, KeyError) else str(exc)
            return self._topics.dlq, dlq_record(reason, origin, record.value), None
        context = TaskContext(
            run_id=request["run_id"],
            pipeline=pipeline.name,
            task=task.name,
            attempt=request["attempt"],
            event=request["event"],
            upstream=request["upstream"],
            params=task.params,
        )
        async with slots:
            started = time.time()
            try:
                output, error, ok = await execute(task, context), None, True
            except TaskFailed as exc:
                output, error, ok = None, str(exc), False
        result = TaskFinished(
            run_id=context.run_id,
            task=task.name,
            attempt=context.attempt,
            ok=ok,
            output=output,
            error=error,
            started_at=started,
            finished_at=time.time(),
        )
        return self._topics.control, encode_control(result), context.run_id.encode()
