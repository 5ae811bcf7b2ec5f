"""The benchmark's Kafka chores: topics that are ready before use, filling a topic fast,
reading record timestamps back, and checking that a consumer group caught up.

A topic is used only once its partitions have leaders, so no client of the benchmark logs
"not found in cluster metadata" or ``NotLeaderForPartition`` while the broker is still
creating it. Every topic a run creates is named under that run's prefix and deleted at
the end.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from headwater.runner.envelope import CloudEvent, Headers, to_kafka
from headwater.runner.log import kafka
from headwater.runner.settings import Settings

#: one produce request's worth of records per batch (the broker takes up to 1 MB)
BATCH_BYTES = 512 * 1024
READY_WITHIN = 30.0


async def create_topics(settings: Settings, names: Iterable[str]) -> None:
    """Create plain topics with the configured partition count and wait until ready."""
    topics = [
        NewTopic(name, settings.kafka.partitions, settings.kafka.replication) for name in names
    ]
    admin = AIOKafkaAdminClient(**settings.kafka.client_options())
    await admin.start()
    try:
        await admin.create_topics(topics)
    finally:
        await admin.close()
    await wait_until_led(settings, [topic.name for topic in topics])


async def ensure_log_topics(settings: Settings, routes: set[str]) -> None:
    """The runner's topics (``kafka.ensure_topics``), ready for use: every topic under
    the prefix of ``settings``."""
    await kafka.ensure_topics(settings, routes)
    admin = AIOKafkaAdminClient(**settings.kafka.client_options())
    await admin.start()
    try:
        names = [n for n in await admin.list_topics() if n.startswith(settings.topics.prefix)]
    finally:
        await admin.close()
    await wait_until_led(settings, names)


async def wait_until_led(settings: Settings, names: Sequence[str]) -> None:
    """Wait until every partition of ``names`` has a leader that serves it: first the
    broker's metadata names one, then that leader answers an offsets request (which
    aiokafka retries quietly while the partition is still being set up)."""
    admin = AIOKafkaAdminClient(**settings.kafka.client_options())
    await admin.start()
    try:
        deadline = time.monotonic() + READY_WITHIN
        while True:
            described = await admin.describe_topics(list(names))
            if all(_led(topic) for topic in described):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"topics without leaders after {READY_WITHIN:.0f}s: {names}")
            await asyncio.sleep(0.05)
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(**settings.kafka.client_options(), enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [
            TopicPartition(topic["topic"], p["partition"])
            for topic in described
            for p in topic["partitions"]
        ]
        await consumer.end_offsets(partitions)
    finally:
        await consumer.stop()


def _led(topic: dict[str, Any]) -> bool:
    partitions = topic["partitions"]
    return (
        topic["error_code"] == 0
        and bool(partitions)
        and all(p["error_code"] == 0 and p["leader"] >= 0 for p in partitions)
    )


async def delete_topics(settings: Settings, prefix: str) -> None:
    """Delete every topic whose name starts with ``prefix`` (this run's topics)."""
    admin = AIOKafkaAdminClient(**settings.kafka.client_options())
    await admin.start()
    try:
        mine = [name for name in await admin.list_topics() if name.startswith(prefix)]
        if mine:
            await admin.delete_topics(mine)
    finally:
        await admin.close()


# --- events -------------------------------------------------------------------------------


def reading(i: int) -> CloudEvent:
    """The benchmark's event: a small sensor reading with 100 distinct subjects."""
    return CloudEvent(
        id=str(i),
        source="/bench",
        type="bench.reading",
        subject=f"sensor/{i % 100}",
        data={"value": 21.5, "unit": "C"},
    )


def encoded(event: CloudEvent) -> tuple[bytes, bytes, Headers]:
    """``(key, value, headers)`` of ``event`` as the runner's bridges write it."""
    headers, value = to_kafka(event)
    return (event.subject or event.id).encode(), value, headers


async def write(
    writer: kafka.BatchWriter, topic: str, records: Iterable[tuple[bytes, bytes, Headers]]
) -> list[asyncio.Future[Any]]:
    """Write encoded records in per-partition batches; returns the batches' futures."""
    for key, value, headers in records:
        await writer.add(topic, value, key=key, headers=headers)
    return await writer.flush()


async def fill_events(settings: Settings, count: int, chunk: int = 50_000) -> None:
    """Write ``count`` benchmark events to the events topic, a chunk at a time, in batches
    as large as a produce request takes."""
    producer = kafka.producer(settings, max_batch_size=BATCH_BYTES, linger_ms=20)
    await producer.start()
    try:
        writer = kafka.BatchWriter(producer)
        for first in range(0, count, chunk):
            records = (encoded(reading(i)) for i in range(first, min(count, first + chunk)))
            futures = await write(writer, settings.topics.events, records)
            await kafka.all_acknowledged(futures, settings.kafka.write_timeout * 4)
    finally:
        await producer.stop()


async def record_times(settings: Settings, topic: str) -> dict[str, float]:
    """Each record's CloudEvent id -> its Kafka timestamp (seconds), read from the topic."""
    consumer = AIOKafkaConsumer(**settings.kafka.client_options(), enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(settings.kafka.partitions)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        times: dict[str, float] = {}
        while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
            batch = await consumer.getmany(timeout_ms=500, max_records=10_000)
            for records in batch.values():
                for record in records:
                    event_id = dict(record.headers).get("ce_id", b"").decode()
                    times[event_id] = record.timestamp / 1000
        return times
    finally:
        await consumer.stop()


# --- progress -----------------------------------------------------------------------------


class CommitWatch:
    """Whether consumer group ``role`` has committed every record of ``topic``, asked
    through one client kept open (a client per check would load the benchmarked process)."""

    def __init__(self, settings: Settings, role: str, topic: str) -> None:
        self._consumer = AIOKafkaConsumer(
            **settings.kafka.client_options(),
            group_id=settings.topics.group(role),
            enable_auto_commit=False,
        )
        self._partitions = [TopicPartition(topic, p) for p in range(settings.kafka.partitions)]

    async def __aenter__(self) -> CommitWatch:
        await self._consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._consumer.stop()

    async def caught_up(self) -> bool:
        ends = await self._consumer.end_offsets(self._partitions)
        for tp, end in ends.items():
            if (await self._consumer.committed(tp) or 0) < end:
                return False
        return True

    async def processed(self) -> int:
        """How many records of ``topic`` the group has committed."""
        return sum([await self._consumer.committed(tp) or 0 for tp in self._partitions])


async def until(
    check: Callable[[], Awaitable[bool]],
    within: float,
    worker: asyncio.Task[Any] | None = None,
    every: float = 0.2,
) -> None:
    """Poll ``check``; fail at the deadline, or at once if ``worker`` died."""
    deadline = time.monotonic() + within
    while not await check():
        if worker is not None and worker.done():
            worker.result()  # raises what stopped it
            raise RuntimeError("the benchmarked component stopped early")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the benchmark did not finish within {within:.0f}s")
        await asyncio.sleep(every)
