"""Kafka clients built one way for the whole process, and the topics the log needs.

Producers are idempotent with ``acks=all``; consumers never auto-commit (offsets move
only after the work they stand for is written) and use a 10 s session timeout, so a dead
process's partitions move within the failover budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from headwater.runner.settings import Settings

log = logging.getLogger(__name__)

SESSION_TIMEOUT_MS = 10_000
HEARTBEAT_MS = 3_000


def producer(settings: Settings, **overrides: Any) -> AIOKafkaProducer:
    options: dict[str, Any] = {
        **settings.kafka.client_options(),
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 5,
        "request_timeout_ms": settings.kafka.request_timeout_ms,
    }
    options.update(overrides)
    return AIOKafkaProducer(**options)


async def send(
    producer: AIOKafkaProducer,
    topic: str,
    value: bytes,
    *,
    key: bytes | None = None,
    headers: list[tuple[str, bytes]] | None = None,
) -> asyncio.Future[Any]:
    """Enqueue one record; the returned future resolves once Kafka acknowledged it."""
    future: asyncio.Future[Any] = await producer.send(topic, value, key=key, headers=headers)
    return future


def transactional_producer(settings: Settings, transactional_id: str) -> AIOKafkaProducer:
    """A producer whose writes and consumer offsets commit atomically."""
    return producer(settings, transactional_id=transactional_id)


def consumer(settings: Settings, *topics: str, group: str | None, **overrides: Any) -> Any:
    options: dict[str, Any] = {
        **settings.kafka.client_options(),
        "group_id": group,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "session_timeout_ms": SESSION_TIMEOUT_MS,
        "heartbeat_interval_ms": HEARTBEAT_MS,
        "isolation_level": "read_committed",
    }
    options.update(overrides)
    return AIOKafkaConsumer(*topics, **options)


async def ensure_topics(settings: Settings, routes: set[str]) -> None:
    """Create the log's topics when missing. ``runs`` is compacted and shares
    ``control``'s partition count, so a run's state lives in the partition of its id."""
    topics = settings.topics
    kafka = settings.kafka
    compacted = {"cleanup.policy": "compact"}
    wanted = [
        NewTopic(topics.events, kafka.partitions, kafka.replication),
        NewTopic(topics.control, kafka.partitions, kafka.replication),
        NewTopic(topics.runs, kafka.partitions, kafka.replication, topic_configs=compacted),
        NewTopic(topics.completions, kafka.partitions, kafka.replication),
        NewTopic(topics.dlq, 1, kafka.replication),
        *(NewTopic(topics.tasks(r), kafka.partitions, kafka.replication) for r in routes),
    ]
    admin = AIOKafkaAdminClient(**settings.kafka.client_options())
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in wanted if t.name not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # another process was first
                await admin.create_topics(missing)
            log.info("created topics %s", ", ".join(t.name for t in missing))
    finally:
        await admin.close()
