"""Kafka clients built one way for the whole process, and the topics the log needs.

Producers are idempotent with ``acks=all``; consumers never auto-commit (offsets move
only after the work they stand for is written) and use a 10 s session timeout, so a dead
process's partitions move within the failover budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from headwater.runner.errors import KafkaUnavailable
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


async def unacknowledged(
    futures: Iterable[asyncio.Future[Any]], within: float
) -> set[asyncio.Future[Any]]:
    """Wait up to ``within`` seconds for Kafka to acknowledge every write; return the writes
    that failed or are still pending.

    A deadline of our own is needed: while the partition leader's node is unreachable,
    aiokafka keeps a batch queued without failing it. A write given up on here may still
    land later; callers treat it as failed (redeliver), and dedup downstream absorbs the
    copy. Every write's outcome is retrieved, so none is reported as never retrieved.
    """
    futures = list(futures)
    for future in futures:
        future.add_done_callback(_retrieve)
    if not futures:
        return set()
    done, pending = await asyncio.wait(futures, timeout=within)
    return pending | {f for f in done if f.cancelled() or f.exception() is not None}


async def all_acknowledged(futures: Iterable[asyncio.Future[Any]], within: float) -> None:
    """Like ``unacknowledged``, but raise ``KafkaUnavailable`` if any write is missing."""
    missing = await unacknowledged(futures, within)
    if missing:
        reasons = {
            repr(f.exception()) if f.done() and not f.cancelled() else "timed out" for f in missing
        }
        raise KafkaUnavailable(f"{len(missing)} write(s) not acknowledged: {', '.join(reasons)}")


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def transactional_producer(settings: Settings, transactional_id: str) -> AIOKafkaProducer:
    """A producer whose writes and consumer offsets commit atomically. A transaction left
    open by a process that died unfenced is aborted by the broker after 10 s."""
    return producer(settings, transactional_id=transactional_id, transaction_timeout_ms=10_000)


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
