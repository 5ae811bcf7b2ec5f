"""One topic reader: every record of a partition from its beginning up to its end.

Used where a component needs what a topic holds now rather than a subscription: the
control processor's changelog restore, and the CLI and tests reading a topic back. The
end is the partition's end offset when reading starts (``read_committed``: the last
stable offset), so a reader never waits for records written after it began.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from headwater.runner.log import kafka
from headwater.runner.log.lag import lag_of
from headwater.runner.settings import Settings

FETCH_RECORDS = 5000
#: Larger fetches than a subscriber's: a reader wants a partition's whole history fast.
FETCH_BYTES = {"max_partition_fetch_bytes": 4 * 1024 * 1024, "fetch_max_bytes": 16 * 1024 * 1024}


async def read_partition(
    settings: Settings, topic: str, partition: int, start: int = 0
) -> AsyncIterator[list[Any]]:
    """Yield the partition's records from offset ``start`` in fetched batches, oldest
    first."""
    async for records in read_now(settings, topic, [partition], start=start):
        yield records


async def offsets(settings: Settings, topic: str, partition: int) -> tuple[int, int]:
    """The partition's first offset and its end (``read_committed``: the last stable one)."""
    reader = kafka.consumer(settings, group=None)
    await reader.start()
    try:
        tp = TopicPartition(topic, partition)
        beginning = (await reader.beginning_offsets([tp]))[tp]
        end = (await reader.end_offsets([tp]))[tp]
    finally:
        await reader.stop()
    return beginning, end


async def read_now(
    settings: Settings, topic: str, partitions: list[int] | None = None, start: int = 0
) -> AsyncIterator[list[Any]]:
    """Yield the records of ``partitions`` (default: all of the topic's) in fetched
    batches, each partition's oldest first (from offset ``start``, else its beginning), up
    to the end each had when reading began."""
    if partitions is None:  # all of them: as the cluster's metadata has them
        partitions = await topic_partitions(settings, topic)
    if not partitions:  # no such topic (yet): nothing in it
        return
    reader = kafka.consumer(settings, group=None, **FETCH_BYTES)
    await reader.start()
    try:
        tps = [TopicPartition(topic, p) for p in partitions]
        reader.assign(tps)
        await reader.seek_to_beginning(*tps)
        if start:
            for tp in tps:
                if start > await reader.position(tp):
                    reader.seek(tp, start)
        ends = await reader.end_offsets(tps)
        while [tp for tp, end in ends.items() if await reader.position(tp) < end]:
            batch = await reader.getmany(*tps, timeout_ms=500, max_records=FETCH_RECORDS)
            for records in batch.values():
                if records:
                    yield records
    finally:
        await reader.stop()


async def topic_partitions(settings: Settings, topic: str) -> list[int]:
    """The topic's partitions, as the cluster's metadata has them (none: no such topic)."""
    admin = AIOKafkaAdminClient(**settings.kafka.client_options())
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    if described.get("error_code"):  # unknown topic
        return []
    return sorted(p["partition"] for p in described.get("partitions", ()))


async def lags(settings: Settings) -> dict[tuple[str, str], int]:
    """Per consumer group of this instance's topics (their prefix) and topic, the records
    not yet consumed: the end offsets less the group's committed offsets (a partition
    the group never committed counts from its beginning)."""
    prefix = settings.topics.prefix
    admin = AIOKafkaAdminClient(**settings.kafka.client_options())
    await admin.start()
    try:
        groups = [g[0] for g in await admin.list_consumer_groups() if g[0].startswith(prefix)]
        committed = {group: await admin.list_consumer_group_offsets(group) for group in groups}
        existing = set(await admin.list_topics())
    finally:
        await admin.close()
    committed = {  # a deleted topic's offsets stay with its group: not a lag
        group: {tp: meta for tp, meta in offsets.items() if tp.topic in existing}
        for group, offsets in committed.items()
    }
    tps = {tp for offsets in committed.values() for tp in offsets}
    if not tps:
        return {}
    reader = kafka.consumer(settings, group=None, isolation_level="read_committed")
    await reader.start()
    try:
        ends = await reader.end_offsets(list(tps))
        starts = await reader.beginning_offsets(list(tps))
    finally:
        await reader.stop()
    out: dict[tuple[str, str], int] = {}
    for group, offsets in committed.items():
        mine = {tp: ends[tp] for tp in offsets}
        for tp, lag in lag_of(mine, starts, offsets).items():
            key = (group, tp.topic)
            out[key] = out.get(key, 0) + lag.lag
    return out
