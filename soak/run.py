"""The soak (``make soak``, minutes, not in CI): two ``headwater dev`` processes share one
log under steady load while this script, again and again, pauses one past the consumer
session timeout (SIGSTOP, then SIGCONT), SIGKILLs one and starts it again, or bounces the
broker. It then counts, from the completions topic:

- events in (published, each acknowledged by Kafka), runs completed (distinct trigger ids);
- duplicates: trigger ids with more than one completion;
- lost: published ids with no completion once the system is quiet again;
- the same two for a batching pipeline on the same events (``soaked_batches``, windows of
  up to 50 events): an event in two windows, an event in none;

prints them and exits 1 on any duplicate or lost event.

    .venv/bin/python -m soak.run --seconds 180 --rate 100
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer

from headwater.runner.envelope import CloudEvent, to_kafka
from headwater.runner.log import kafka
from headwater.runner.settings import Settings, Topics
from tests.processes import HeadwaterProcess
from tests.servers.services import KafkaServer

PIPELINE = """\
name: soaked
triggers:
  - type: soak.event
tasks:
  first: {python: "soak_tasks:first", retries: 5, backoff: {initial: 200ms, max: 2s}}
  second: {python: "soak_tasks:second", needs: [first], retries: 5, backoff: {initial: 200ms}}
"""
BATCHES = """\
name: soaked_batches
triggers:
  - type: soak.event
    batch: {max_events: 50, max_wait: 2s}
tasks:
  ids: {python: "soak_tasks:ids"}
"""
TASKS = """\
import asyncio

def ids(ctx):
    return {"ids": [e["id"] for e in ctx.events]}

async def first(ctx):
    await asyncio.sleep(0.01)
    return {"n": 1}

def second(ctx):
    return {"n": ctx.upstream["first"]["n"] + 1}
"""
PAUSE_S = 14.0  # past the 10 s session timeout: the group moves the paused one's partitions


class Soak:
    def __init__(self, settings: Settings, folder: Path, rate: float) -> None:
        self.settings = settings
        self.folder = folder
        self.rate = rate
        self.published: list[str] = []
        self.actions: Counter[str] = Counter()
        self.processes = [self._process(i) for i in range(2)]

    def _process(self, number: int) -> HeadwaterProcess:
        env = {"HEADWATER_INSTANCE": f"soak-{number}", "HEADWATER_TASK_TIMEOUT": "20s"}
        log = self.folder / f"dev-{number}.log"
        return HeadwaterProcess(["dev", str(self.folder)], self.settings, log, env)

    async def publish(self, seconds: float) -> None:
        """Steady load; an event counts as in only once Kafka acknowledged it (a write that
        fails while the broker is away is tried again with the same id)."""
        producer = None
        try:
            end, n = time.monotonic() + seconds, 0
            while time.monotonic() < end:
                event_id = f"e{n}"
                event = CloudEvent(id=event_id, source="/soak", type="soak.event", data={})
                headers, value = to_kafka(event)
                while True:
                    try:
                        if producer is None:
                            producer = kafka.producer(self.settings, request_timeout_ms=5000)
                            await producer.start()
                        await producer.send_and_wait(
                            self.settings.topics.events, value, key=event_id.encode(),
                            headers=headers,
                        )  # fmt: skip
                        break
                    except Exception:  # noqa: BLE001 - broker bounced: same event again
                        # ... from a new producer: after a failed batch, an idempotent
                        # producer can be refused forever (OutOfOrderSequenceNumber).
                        if producer is not None:
                            with contextlib.suppress(Exception):
                                await producer.stop()
                        producer = None
                        await asyncio.sleep(0.5)
                self.published.append(event_id)
                n += 1
                await asyncio.sleep(1 / self.rate)
        finally:
            if producer is not None:
                await producer.stop()

    async def chaos(self, seconds: float, broker: KafkaServer) -> None:
        end = time.monotonic() + seconds
        await asyncio.sleep(10)
        while time.monotonic() < end - 20:
            action = random.choice(["pause", "kill", "bounce"])
            victim = random.choice(self.processes)
            self.actions[action] += 1
            print(f"  ... {time.strftime('%T')} {action}", flush=True)
            assert victim.process is not None
            if action == "pause":
                victim.process.send_signal(signal.SIGSTOP)
                await asyncio.sleep(PAUSE_S)
                victim.process.send_signal(signal.SIGCONT)
            elif action == "kill":
                victim.kill()
                await asyncio.sleep(2)
                victim.start()
            else:
                await asyncio.to_thread(broker.stop)
                await asyncio.sleep(3)
                await asyncio.to_thread(broker.start)
            await asyncio.sleep(random.uniform(8, 15))

    async def completions(
        self, quiet_for: float, within: float
    ) -> tuple[Counter[str], Counter[str]]:
        """Trigger ids of every per-event completion, and the event ids of every batched
        one, read until none came for ``quiet_for``."""
        consumer = AIOKafkaConsumer(
            self.settings.topics.completions,
            bootstrap_servers=self.settings.kafka.bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
        )
        await consumer.start()
        seen: Counter[str] = Counter()
        batched: Counter[str] = Counter()
        try:
            last, deadline = time.monotonic(), time.monotonic() + within
            while time.monotonic() - last < quiet_for and time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    for record in records:
                        run = orjson.loads(record.value)
                        if run["pipeline"] == "soaked_batches":
                            batched.update(run["tasks"]["ids"]["output"]["ids"])
                        else:
                            seen[run["trigger"]["id"]] += 1
                        last = time.monotonic()
                published = set(self.published)
                if published <= set(seen) and published <= set(batched):
                    last = min(last, time.monotonic() - quiet_for + 5)  # all in: 5 s more
        finally:
            await consumer.stop()
        return seen, batched


async def main(seconds: float, rate: float) -> int:
    broker = KafkaServer()
    broker.start()
    base = Settings.from_env({"HEADWATER_KAFKA": broker.bootstrap})
    settings = Settings(kafka=base.kafka, topics=Topics(prefix=f"soak{uuid.uuid4().hex[:8]}."))
    folder = Path(tempfile.mkdtemp(prefix="headwater-soak-"))  # kept: its logs say why
    (folder / "soaked.yaml").write_text(PIPELINE)
    (folder / "soaked_batches.yaml").write_text(BATCHES)
    (folder / "soak_tasks.py").write_text(TASKS)
    soak = Soak(settings, folder, rate)
    for process in soak.processes:
        process.start()
    await soak.processes[0].output_shows("headwater dev:")
    started = time.monotonic()
    try:
        await asyncio.gather(soak.publish(seconds), soak.chaos(seconds, broker))
        seen, batched = await soak.completions(quiet_for=60, within=600)
    finally:
        for process in soak.processes:
            if process.process is not None and process.process.poll() is None:
                process.process.send_signal(signal.SIGCONT)
                process.stop()
    published = set(soak.published)
    lost = sorted(published - set(seen), key=lambda i: int(i[1:]))
    doubled = {i: n for i, n in seen.items() if n > 1}
    print(f"soak: {time.monotonic() - started:.0f} s, actions {dict(soak.actions)}")
    print(f"  events in        {len(published):,}")
    print(f"  runs completed   {len(set(seen) & published):,}")
    print(f"  duplicates       {len(doubled):,}  {dict(list(doubled.items())[:10])}")
    print(f"  lost             {len(lost):,}  {lost[:10]}")
    batch_lost = sorted(published - set(batched), key=lambda i: int(i[1:]))
    batch_doubled = {i: n for i, n in batched.items() if n > 1}
    print(f"  batched events   {len(set(batched) & published):,}")
    print(f"  in two windows   {len(batch_doubled):,}  {dict(list(batch_doubled.items())[:10])}")
    print(f"  in no window     {len(batch_lost):,}  {batch_lost[:10]}")
    print(f"  logs             {folder}")
    return 1 if doubled or lost or batch_doubled or batch_lost else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=180.0)
    parser.add_argument("--rate", type=float, default=100.0, help="events per second")
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.seconds, args.rate)))
