"""The baselines: what raw aiokafka does on this machine, measured in the same run.

- produce: ``AIOKafkaProducer.send`` pipelined (acks=all, idempotent, linger 5 ms);
- consume->produce: a batched ``getmany`` loop writing each record onward, committing
  each batch's offsets after its writes were acknowledged.

``warm_up`` runs both once, untimed, first: the broker's JVM is cold at the start of a run
(raw produce measured about half its warmed-up rate), and a cold baseline would flatter
every ratio measured against it.
"""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from headwater.runner.settings import Settings

VALUE = b"x" * 200


async def warm_up(settings: Settings, topic: str, onward: str, count: int) -> None:
    await raw_produce(settings, topic, count)
    await raw_consume_produce(settings, topic, onward, count)


async def raw_produce(settings: Settings, topic: str, count: int) -> float:
    producer = AIOKafkaProducer(
        **settings.kafka.client_options(), acks="all", enable_idempotence=True, linger_ms=5
    )
    await producer.start()
    try:
        started = time.perf_counter()
        futures = [await producer.send(topic, VALUE) for _ in range(count)]
        await asyncio.gather(*futures)
        return count / (time.perf_counter() - started)
    finally:
        await producer.stop()


async def raw_consume_produce(settings: Settings, source: str, target: str, count: int) -> float:
    consumer = AIOKafkaConsumer(
        source,
        **settings.kafka.client_options(),
        group_id=f"{source}.raw",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    producer = AIOKafkaProducer(
        **settings.kafka.client_options(), acks="all", enable_idempotence=True, linger_ms=5
    )
    await consumer.start()
    await producer.start()
    try:
        done, started = 0, None
        while done < count:
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            if started is None and batch:
                started = time.perf_counter()
            futures = [
                await producer.send(target, r.value, key=r.key)
                for records in batch.values()
                for r in records
            ]
            await asyncio.gather(*futures)
            if batch:
                await consumer.commit({tp: rs[-1].offset + 1 for tp, rs in batch.items()})
            done += len(futures)
        assert started is not None
        return count / (time.perf_counter() - started)
    finally:
        await consumer.stop()
        await producer.stop()
