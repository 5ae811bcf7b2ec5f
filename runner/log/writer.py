"""The batched writer every hot path uses, and the size of a record as Kafka counts it.

What must hold: a record Kafka would refuse for its size is never added (``RecordTooLarge``
names it and its size); a keyed record goes to the partition Kafka's default partitioner
picks, so it shares a partition with the same key written by any other client.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2

from headwater.runner.errors import RecordTooLarge

#: The largest record headwater writes: under Kafka's default ``max.message.bytes`` and the
#: producer's ``max_request_size`` (1 MiB), with room for the batch around it.
MAX_RECORD_BYTES = 1_000_000
RECORD_OVERHEAD = 64


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
        self._batches: list[tuple[str, int, int, asyncio.Future[Any]]] = []
        self._flushed: list[tuple[str, int, int, asyncio.Future[Any]]] = []
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
            count = await self.partitions(topic)
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
        self._flushed, self._batches = self._batches, []
        self._flushes += 1
        return sent

    def ends(self, topic: str) -> dict[int, int]:
        """Per partition of ``topic``, the offset after the last record the last flush
        wrote there (once its futures resolved: unresolved or failed batches are left
        out)."""
        ends: dict[int, int] = {}
        for sent_topic, partition, count, future in self._flushed:
            if sent_topic == topic and future.done() and not future.exception():
                end = future.result().offset + count
                ends[partition] = max(ends.get(partition, 0), end)
        return ends

    def discard(self) -> None:
        """Drop what was added but not sent (an aborted transaction, a failed batch)."""
        self._open.clear()
        self._sent.clear()
        self._batches.clear()

    async def _send(self, topic: str, partition: int) -> None:
        batch = self._open.pop((topic, partition))
        batch.close()
        future = await self._producer.send_batch(batch, topic, partition=partition)
        self._sent.append(future)
        self._batches.append((topic, partition, batch.record_count(), future))

    async def partitions(self, topic: str) -> int:
        """How many partitions ``topic`` has (asked once)."""
        if topic not in self._partitions:
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
