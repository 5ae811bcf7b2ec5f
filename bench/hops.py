"""The floor under the latency rows: how long one consume -> produce hop takes on this
broker with the clients headwater uses, with nothing of headwater in between.

A publisher offers records at a steady rate to topic ``a``; a relay reads ``a`` and writes
each record to ``b`` in one of two ways; a ``read_committed`` reader of ``b`` notes when
each record arrived. Latency is from the publisher's send to the reader's arrival (both
clocks in this process), in ms:

- ``direct``: no relay; the reader reads ``a`` (one produce and one fetch);
- ``plain``: the relay writes with acks, then commits its offsets (the router's path);
- ``txn``: the relay writes and commits its offsets in one transaction per fetched batch
  (the control processor's path).

    PYTHONPATH=. .venv/bin/python -m bench.hops [--rate 1000] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import struct
import time
import uuid
from typing import Any

from bench.kafkatools import create_topics, delete_topics, until
from headwater.runner.log import kafka
from headwater.runner.settings import Settings

STAMP = struct.Struct(">d")


async def publish(settings: Settings, topic: str, rate: float, seconds: float) -> int:
    producer = kafka.producer(settings, linger_ms=0)
    await producer.start()
    try:
        tick, sent = 0.005, 0
        start = time.monotonic()
        while (now := time.monotonic()) - start < seconds:
            due = int((now - start) * rate)
            while sent < due:
                await producer.send(topic, STAMP.pack(time.time()) + bytes(200))
                sent += 1
            await asyncio.sleep(tick)
        await producer.flush()
        return sent
    finally:
        await producer.stop()


async def relay(
    settings: Settings, source: str, target: str, mode: str, stop: asyncio.Event
) -> None:
    group = f"{source}.relay"
    consumer = kafka.consumer(settings, source, group=group)
    if mode == "txn":
        producer = kafka.transactional_producer(settings, f"{group}.{uuid.uuid4()}")
    else:
        producer = kafka.producer(settings, linger_ms=0)
    await producer.start()
    await consumer.start()
    writer = kafka.BatchWriter(producer)
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=200, max_records=5000)
            if not batch:
                continue
            offsets = {tp: records[-1].offset + 1 for tp, records in batch.items()}
            if mode == "txn":
                async with producer.transaction():
                    for records in batch.values():
                        for record in records:
                            await writer.add(target, record.value, partition=record.partition)
                    await writer.flush()
                    await producer.send_offsets_to_transaction(offsets, group)
            else:
                for records in batch.values():
                    for record in records:
                        await writer.add(target, record.value, partition=record.partition)
                await kafka.all_acknowledged(await writer.flush(), 10)
                await consumer.commit(offsets)
    finally:
        await consumer.stop()
        await producer.stop()


async def read(settings: Settings, topic: str, arrived: list[float], stop: asyncio.Event) -> None:
    consumer = kafka.consumer(settings, topic, group=f"{topic}.reader")
    await consumer.start()
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=100)
            now = time.time()
            for records in batch.values():
                arrived.extend(now - STAMP.unpack_from(r.value)[0] for r in records)
    finally:
        await consumer.stop()


async def hop(settings: Settings, mode: str, rate: float, seconds: float) -> dict[str, Any]:
    prefix = f"hops.{uuid.uuid4().hex[:8]}"
    a, b = f"{prefix}.a", f"{prefix}.b"
    await create_topics(settings, [a, b])
    stop = asyncio.Event()
    arrived: list[float] = []
    tasks = [asyncio.create_task(read(settings, a if mode == "direct" else b, arrived, stop))]
    if mode != "direct":
        tasks.append(asyncio.create_task(relay(settings, a, b, mode, stop)))
    try:
        await publish(settings, a, 20, 2)  # groups joined and warm before the clock runs
        await asyncio.sleep(2)
        arrived.clear()
        sent = await publish(settings, a, rate, seconds)

        async def all_arrived() -> bool:
            return len(arrived) >= sent

        with contextlib.suppress(TimeoutError):  # what is missing shows in the figures
            await until(all_arrived, 10)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        await delete_topics(settings, prefix)
    ms = sorted(x * 1000 for x in arrived)
    return {
        "mode": mode,
        "sent": sent,
        "arrived": len(ms),
        "p50": statistics.median(ms),
        "p99": ms[int(len(ms) * 0.99) - 1],
        "max": ms[-1],
    }


async def main(rate: float, seconds: float, modes: list[str]) -> None:
    settings = Settings.from_env()
    for mode in modes:
        r = await hop(settings, mode, rate, seconds)
        print(
            f"{r['mode']:>6}: {r['arrived']}/{r['sent']} arrived; "
            f"p50 {r['p50']:.1f} ms, p99 {r['p99']:.1f} ms, max {r['max']:.1f} ms",
            flush=True,
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--modes", default="direct,plain,txn")
    args = parser.parse_args()
    asyncio.run(main(args.rate, args.seconds, args.modes.split(",")))
