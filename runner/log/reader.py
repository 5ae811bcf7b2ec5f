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

from headwater.runner.log import kafka
from headwater.runner.settings import Settings

FETCH_RECORDS = 5000


async def read_partition(
    settings: Settings, topic: str, partition: int
) -> AsyncIterator[list[Any]]:
    """Yield the partition's records in fetched batches, oldest first."""
    tp = TopicPartition(topic, partition)
    reader = kafka.consumer(settings, group=None)
    await reader.start()
    try:
        reader.assign([tp])
        await reader.seek_to_beginning(tp)
        end = (await reader.end_offsets([tp]))[tp]
        while await reader.position(tp) < end:
            batch = await reader.getmany(tp, timeout_ms=500, max_records=FETCH_RECORDS)
            records = batch.get(tp)
            if records:
                yield records
    finally:
        await reader.stop()
