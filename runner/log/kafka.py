"""Kafka clients built one way for the whole process, and the topics the log needs.

Producers are idempotent with ``acks=all``; consumers never auto-commit (offsets move
only after the work they stand for is written) and use a 10 s session timeout, so a dead
process's partitions move within the failover budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import aiokafka.producer.sender
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    CommitFailedError,
    KafkaConnectionError,
    KafkaError,
    TopicAlreadyExistsError,
)
from aiokafka.partitioner import murmur2

from headwater.runner.errors import KafkaFailed, KafkaUnavailable, RecordTooLarge
from headwater.runner.settings import Settings

log = logging.getLogger(__name__)

SESSION_TIMEOUT_MS = 10_000
HEARTBEAT_MS = 3_000
BATCH_BYTES = 256 * 1024
#: The largest record headwater writes: under Kafka's default ``max.message.bytes`` and the
#: producer's ``max_request_size`` (1 MiB), with room for the batch around it.
MAX_RECORD_BYTES = 1_000_000
RECORD_OVERHEAD = 64

#: How soon a transactional producer asks again to add a partition when the broker says
#: the previous transaction is still being completed (its markers being written). Every
#: stage that commits a transaction per fetched batch meets this on its next batch;
#: aiokafka waits a fixed 20 ms (``BACKOFF_OVERRIDE``, KAFKA-5477) and has no setting for
#: it. At 2 ms a transactional consume -> produce hop on loopback takes half as long
#: (p50 47 -> 25 ms, p99 92 -> 56 ms at 1k records/s, ``bench/hops.py``).
CONCURRENT_TXN_RETRY_S = 0.002
aiokafka.producer.sender.BACKOFF_OVERRIDE = CONCURRENT_TXN_RETRY_S


def producer(settings: Settings, **overrides: Any) -> AIOKafkaProducer:
    options: dict[str, Any] = {
        **settings.kafka.client_options(),
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 5,
        "max_batch_size": BATCH_BYTES,
        "request_timeout_ms": settings.kafka.request_timeout_ms,
    }
    options.update(overrides)
    return AIOKafkaProducer(**options)


class BatchWriter:
    """Writes records in per-partition batches built here (``create_batch``/``send_batch``).

    ``producer.send`` costs a future, a partitioner call and a wake-up of the sender per
    record; a hot path that writes thousands of records per fetched batch pays that once
    per batch instead. Records are appended with ``add`` and go out with ``flush``, whose
    futures resolve when Kafka acknowledged each batch (or, for a transactional producer,
    belong to the open transaction). A keyed record goes to the partition Kafka's default
    partitioner picks (murmur2), so it shares a partition with the same key written by any
    other client; unkeyed records of one flush go to one partition, the next flush to the
    next (the "sticky" partitioner's behaviour).
    """

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self._producer = producer
        self._open: dict[tuple[str, int], Any] = {}
        self._sent: list[asyncio.Future[Any]] = []
        self._partitions: dict[str, int] = {}
        self._flushes = 0

    async def add(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        partition: int | None = None,
    ) -> None:
        """Append one record (``value=None``: a tombstone) to its partition's open batch;
        ``RecordTooLarge`` (nothing added) if Kafka would refuse it for its size."""
        size = record_size(key, value, headers)
        if size > MAX_RECORD_BYTES:
            raise RecordTooLarge(f"a record for {topic}", size, MAX_RECORD_BYTES)
        if partition is None:
            count = self._partitions.get(topic) or await self._count_partitions(topic)
            partition = self._flushes % count if key is None else partition_for(key, count)
        batch = self._open.get((topic, partition))
        if batch is None:
            batch = self._open[topic, partition] = self._producer.create_batch()
        if batch.append(key=key, value=value, timestamp=None, headers=headers or []) is None:
            await self._send(topic, partition)
            batch = self._open[topic, partition] = self._producer.create_batch()
            batch.append(key=key, value=value, timestamp=None, headers=headers or [])

    async def flush(self) -> list[asyncio.Future[Any]]:
        """Send every open batch; return the futures of all batches sent since the last
        flush (each resolves once Kafka acknowledged it)."""
        for topic, partition in list(self._open):
            await self._send(topic, partition)
        sent, self._sent = self._sent, []
        self._flushes += 1
        return sent

    def discard(self) -> None:
        """Drop what was added but not sent (an aborted transaction, a failed batch)."""
        self._open.clear()
        self._sent.clear()

    async def _send(self, topic: str, partition: int) -> None:
        batch = self._open.pop((topic, partition))
        batch.close()
        self._sent.append(await self._producer.send_batch(batch, topic, partition=partition))

    async def _count_partitions(self, topic: str) -> int:
        self._partitions[topic] = len(await self._producer.partitions_for(topic))
        return self._partitions[topic]


def record_size(
    key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]] | None = None
) -> int:
    """A record's size as Kafka counts it against ``max.message.bytes``, plus a margin."""
    size = RECORD_OVERHEAD + len(key or b"") + len(value or b"")
    for name, header in headers or ():
        size += len(name) + len(header or b"") + 8
    return size


@functools.lru_cache(maxsize=65_536)
def partition_for(key: bytes, partitions: int) -> int:
    """Kafka's default partitioner: murmur2 of the key (keys repeat: cached)."""
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


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


async def commit(consumer: Any, offsets: dict[Any, int]) -> bool:
    """Commit ``offsets``; False if the group rebalanced meanwhile. That is normal (a
    process joined or left): the partitions' new owner reads those records again, and the
    run table deduplicates what they cause."""
    try:
        await consumer.commit(offsets)
    except CommitFailedError:
        log.info("offsets not committed: the consumer group rebalanced; the records are read again")
        return False
    return True


@contextlib.asynccontextmanager
async def started(*clients: Any) -> AsyncIterator[None]:
    """Start Kafka clients in order and stop them in reverse order, whatever happens. An
    aiokafka error that escapes the block is wrapped into headwater's error root here,
    once (``KafkaFailed``, retriable as aiokafka says)."""
    try:
        async with contextlib.AsyncExitStack() as stack:
            for client in clients:
                await client.start()
                stack.push_async_callback(client.stop)
            yield
    except KafkaError as exc:
        retriable = bool(getattr(exc, "retriable", False)) or isinstance(exc, KafkaConnectionError)
        raise KafkaFailed(f"{type(exc).__name__}: {exc}", retriable) from exc


Partitions = Callable[[list[TopicPartition]], Awaitable[None]]


class Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """A consumer group's rebalance, handed to the component that subscribed: what it lost
    (before the group moves it) and what it was given (before it is fetched from)."""

    def __init__(self, *, revoked: Partitions | None = None, assigned: Partitions) -> None:
        self._revoked = revoked
        self._assigned = assigned

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        if self._revoked is not None:
            await self._revoked(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self._assigned(assigned)


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def transactional_producer(settings: Settings, transactional_id: str) -> AIOKafkaProducer:
    """A producer whose writes and consumer offsets commit atomically. A transaction left
    open by a process that died unfenced is aborted by the broker after 10 s.

    Kafka 4 verifies that a partition joined the transaction before accepting a write to
    it, and answers a write that arrives first with a retriable error (NotEnoughReplicas,
    for clients as old as aiokafka's protocol); the default 100 ms retry backoff then
    stalls the transaction, so retries here come after 10 ms. We batch records ourselves
    (``BatchWriter``), so there is nothing to linger for.
    """
    return producer(
        settings,
        transactional_id=transactional_id,
        transaction_timeout_ms=10_000,
        retry_backoff_ms=10,
        linger_ms=0,
    )


class PartitionProducers:
    """One transactional producer per owned partition, with the transactional id
    ``<prefix><partition>``: whoever owns a partition next starts the same id, which
    fences the producer of the previous owner (a process paused past its session timeout
    and resumed) and aborts its open transaction. aiokafka's ``send_offsets_to_transaction``
    sends no consumer group generation (TxnOffsetCommit v0, not KIP-447), so this, and not
    the group, is what keeps a stale owner from committing."""

    def __init__(self, settings: Settings, prefix: str) -> None:
        self._settings = settings
        self._prefix = prefix
        self._producers: dict[int, AIOKafkaProducer] = {}

    async def take(self, partition: int) -> None:
        await self.close(partition)
        txn = transactional_producer(self._settings, f"{self._prefix}{partition}")
        await txn.start()  # InitProducerId: the previous owner is fenced from here on
        self._producers[partition] = txn

    def producer(self, partition: int) -> AIOKafkaProducer:
        return self._producers[partition]

    async def close(self, partition: int) -> None:
        txn = self._producers.pop(partition, None)
        if txn is not None:
            with contextlib.suppress(Exception):  # fenced already, or the broker is away
                await txn.stop()

    async def close_all(self) -> None:
        for partition in list(self._producers):
            await self.close(partition)


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
