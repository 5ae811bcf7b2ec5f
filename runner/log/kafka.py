"""Kafka clients built one way for the whole process, and the topics the log needs.

Producers are idempotent with ``acks=all``; consumers never auto-commit (offsets move
only after the work they stand for is written) and use a 10 s session timeout, so a dead
process's partitions move within the failover budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
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

from headwater.runner.errors import KafkaFailed, KafkaUnavailable

# Re-exported: the batched writer is part of what a loop needs from this module.
from headwater.runner.log.writer import MAX_RECORD_BYTES as MAX_RECORD_BYTES
from headwater.runner.log.writer import BatchWriter as BatchWriter
from headwater.runner.log.writer import record_size as record_size
from headwater.runner.settings import Settings

log = logging.getLogger(__name__)

SESSION_TIMEOUT_MS = 10_000
HEARTBEAT_MS = 3_000
BATCH_BYTES = 256 * 1024

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


async def commit(consumer: Any, offsets: Mapping[Any, Any]) -> bool:
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
                stack.push_async_callback(_stop, client)  # also one whose start failed
                await client.start()
            yield
    except KafkaError as exc:
        retriable = bool(getattr(exc, "retriable", False)) or isinstance(exc, KafkaConnectionError)
        raise KafkaFailed(f"{type(exc).__name__}: {exc}", retriable) from exc


async def _stop(client: Any) -> None:
    """Stop a client; one that never started (or lost the broker) may fail to: that must
    not hide the error that ends the block."""
    with contextlib.suppress(Exception):
        await client.stop()


async def offsets_in_transaction(
    txn: AIOKafkaProducer,
    writes: Iterable[asyncio.Future[Any]],
    offsets: Mapping[TopicPartition, Any],
    group: str,
    within: float,
) -> None:
    """Add the consumer ``offsets`` to the open transaction while its ``writes`` are being
    acknowledged (one round trip less than one after the other); raise if any write was
    refused or is missing, so the transaction aborts, offsets and all."""
    outcomes = await asyncio.gather(
        all_acknowledged(writes, within),
        txn.send_offsets_to_transaction(offsets, group),
        return_exceptions=True,
    )
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome


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
        self._starting: dict[int, asyncio.Future[None]] = {}
        self._closed = False

    async def take(self, partition: int) -> None:
        """Start the partition's producer (fencing its previous owner). A producer is
        held from before its start, so ``close_all`` stops it whatever ``take`` was doing;
        after ``close_all`` nothing more is started.

        A start that ``close`` interrupts fails with ``KafkaUnavailable``: aiokafka's
        ``start()`` waits forever on a metadata update of a client stopped under it, and
        ``take`` runs in a rebalance listener, so a start left waiting would keep the
        consumer from ever rejoining its group (seen: a process resumed after a pause
        stopped its control processor while the listener was starting a producer)."""
        await self.close(partition)
        if self._closed:
            raise KafkaUnavailable("the partition producers are closed (the component stopped)")
        txn = transactional_producer(self._settings, f"{self._prefix}{partition}")
        self._producers[partition] = txn
        start = asyncio.ensure_future(txn.start())  # InitProducerId: fences the previous owner
        self._starting[partition] = start
        try:
            await start
        except BaseException as exc:
            await self.close(partition)
            current = asyncio.current_task()
            if isinstance(exc, asyncio.CancelledError) and not (current and current.cancelling()):
                raise KafkaUnavailable(f"partition {partition}: closed while starting") from None
            raise  # its own failure, or this task cancelled
        self._starting.pop(partition, None)  # a close may already have taken it

    def producer(self, partition: int) -> AIOKafkaProducer:
        return self._producers[partition]

    async def close(self, partition: int) -> None:
        start = self._starting.pop(partition, None)
        if start is not None:
            start.cancel()
        txn = self._producers.pop(partition, None)
        if txn is not None:
            with contextlib.suppress(Exception):  # fenced already, or the broker is away
                await txn.stop()

    async def close_all(self) -> None:
        self._closed = True
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


async def follow_from(reader: AIOKafkaConsumer, topic: str, since: float) -> None:
    """Assign ``reader`` the single partition of ``topic``, from its first record written
    at or after ``since`` (Unix time), or from its end when there is none."""
    tp = TopicPartition(topic, 0)
    reader.assign([tp])
    found = await reader.offsets_for_times({tp: int(since * 1000)})
    if found.get(tp) is not None:
        reader.seek(tp, found[tp].offset)
    else:
        await reader.seek_to_end(tp)


async def ensure_topics(settings: Settings, routes: set[str]) -> None:
    """Create the log's topics when missing. ``runs`` is compacted and shares
    ``control``'s partition count, so a run's state lives in the partition of its id."""
    topics = settings.topics
    kafka = settings.kafka
    # Tombstones are kept a day after compaction reaches them: a local store is trusted
    # for less than that after its last update (``runs.store.TRUSTED_FOR``).
    compacted = {"cleanup.policy": "compact", "delete.retention.ms": str(86_400_000)}
    short = {"retention.ms": str(3_600_000)}  # heartbeats: only the latest ones matter
    day = {"retention.ms": str(86_400_000)}  # cancels: a worker reads back the last hour's
    wanted = [
        NewTopic(topics.events, kafka.partitions, kafka.replication),
        NewTopic(topics.control, kafka.partitions, kafka.replication),
        NewTopic(topics.runs, kafka.partitions, kafka.replication, topic_configs=compacted),
        NewTopic(topics.completions, kafka.partitions, kafka.replication),
        NewTopic(topics.dlq, 1, kafka.replication),
        NewTopic(topics.status, 1, kafka.replication),
        NewTopic(topics.heartbeats, 1, kafka.replication, topic_configs=short),
        NewTopic(topics.cancels, 1, kafka.replication, topic_configs=day),
        NewTopic(topics.lineage, kafka.partitions, kafka.replication),
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
