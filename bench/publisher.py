"""``python -m bench.publisher TOPIC RATE SECONDS``: publish benchmark events at a steady
offered load, in a process of its own so that its work does not queue behind the runner's
on one event loop.

Events are encoded before the clock starts; every tick (a few ms) the events that are due
by then go out as one batch per partition. The producer does not linger: an event's Kafka
timestamp (CreateTime) is set when it is handed to the producer, which is the start of
every latency the benchmark reports. Prints one JSON line: how many were sent (all of them
acknowledged), and how far behind its schedule it fell at worst.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import orjson

from bench.kafkatools import encoded, reading, write
from headwater.runner.log import kafka
from headwater.runner.settings import Settings

TICK = 0.004


async def publish(topic: str, rate: float, seconds: float) -> dict[str, float]:
    settings = Settings.from_env()
    count = int(rate * seconds)
    records = [encoded(reading(i)) for i in range(count)]
    producer = kafka.producer(settings, linger_ms=0)
    await producer.start()
    try:
        await producer.partitions_for(topic)
        writer = kafka.BatchWriter(producer)
        futures, sent, behind = [], 0, 0.0
        started = time.perf_counter()
        while sent < count:
            elapsed = time.perf_counter() - started
            due = min(count, int(elapsed * rate) + 1)
            if due > sent:
                behind = max(behind, elapsed - sent / rate)
                futures += await write(writer, topic, records[sent:due])
                sent = due
            await asyncio.sleep(TICK)
        await kafka.all_acknowledged(futures, settings.kafka.write_timeout)
        return {"sent": sent, "behind_ms": behind * 1000}
    finally:
        await producer.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("topic")
    parser.add_argument("rate", type=float, help="events per second")
    parser.add_argument("seconds", type=float)
    args = parser.parse_args()
    report = asyncio.run(publish(args.topic, args.rate, args.seconds))
    sys.stdout.buffer.write(orjson.dumps(report) + b"\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
