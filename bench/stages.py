"""headwater's own stages, each measured on a fresh topic prefix:

- ingest: the bridge pump (in-memory source -> CloudEvent mapping -> Kafka -> ack after
  the Kafka ack);
- match: the event router over 100 pipelines with mixed filters, from a backlog;
- runs: one-task (no-op) pipelines triggered, executed and completed, end to end, from a
  backlog, timed from the first run's start to the last run's end (not the start-up).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from bench.kafkatools import CommitWatch, ensure_log_topics, fill_events, until
from headwater.bridges.base import Delivery
from headwater.bridges.mapping import mapper
from headwater.bridges.pump import Pump
from headwater.runner.engine import serve
from headwater.runner.envelope import CloudEvent
from headwater.runner.log import kafka
from headwater.runner.model.pipeline import Condition, Pipeline, Task, Trigger
from headwater.runner.observe.hooks import RunObserver
from headwater.runner.router import EventRouter
from headwater.runner.settings import Settings

try:  # (``bench/ab.sh`` also runs these rows on commits from before backpressure)
    from headwater.runner.flow.pressure import PENDING_RUNS, Valve
except ImportError:  # pragma: no cover
    Valve = None  # type: ignore[assignment,misc]

BENCH_KIND = "bench"


@mapper(BENCH_KIND)
def _bench_event(delivery: Delivery) -> list[CloudEvent]:
    return [
        CloudEvent(
            id=delivery.message_id,
            source="/bench",
            type="bench.reading",
            subject=f"sensor/{int(delivery.message_id) % 100}",
            data=orjson.loads(delivery.body),
        )
    ]


class MemorySource:
    """An in-memory source behind the real bridge interface; counts what gets acked."""

    def __init__(self, count: int) -> None:
        self.remaining = count
        self.acked = 0
        self.done = asyncio.Event()
        self._next = 0
        self._body = orjson.dumps({"value": 21.5, "unit": "C", "pad": "x" * 120})

    @property
    def name(self) -> str:
        return "memory"

    async def connect(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def receive(self, max_messages: int) -> list[Delivery]:
        if self.remaining == 0:
            await asyncio.sleep(0.05)
            return []
        take = min(max_messages, self.remaining)
        self.remaining -= take
        first, self._next = self._next, self._next + take
        return [
            Delivery(kind=BENCH_KIND, message_id=str(i), body=self._body)
            for i in range(first, first + take)
        ]

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        self.acked += len(deliveries)
        if self.remaining == 0 and self.acked >= self._next:
            self.done.set()

    async def nack(self, deliveries: Sequence[Delivery]) -> None:
        # The benchmark's Kafka is local and up: a nack means the benchmark is broken.
        raise RuntimeError(f"{len(deliveries)} deliveries were not written")


async def ingest(settings: Settings, count: int) -> float:
    await ensure_log_topics(settings, set())
    source = MemorySource(count)
    stopping = asyncio.Event()
    pump = Pump(
        source,
        functools.partial(kafka.producer, settings),
        settings.topics,
        batch_size=1000,
        write_timeout=settings.kafka.write_timeout,
    )
    started = time.perf_counter()
    task = asyncio.create_task(pump.run(stopping))
    await source.done.wait()
    elapsed = time.perf_counter() - started
    stopping.set()
    await task
    return count / elapsed


def hundred_pipelines() -> list[Pipeline]:
    """100 pipelines with mixed filters: exact types, globs, subject globs, data conditions.
    Of the benchmark's events (100 subjects) one in four matches one of them."""
    pipelines = []
    for i in range(100):
        match i % 4:
            case 0:
                trigger = Trigger(f"other.type.{i}")
            case 1:
                trigger = Trigger("bench.reading", subject=f"sensor/{i}")
            case 2:
                trigger = Trigger("other.*", subject="*/x")
            case _:
                trigger = Trigger(
                    "bench.reading",
                    conditions=(
                        Condition(("value",), "gt", 100.0),
                        Condition(("unit",), "eq", "C"),
                    ),
                )
        pipelines.append(Pipeline(f"p{i}", (trigger,), (Task("t", "python", "bench.tasks:noop"),)))
    return pipelines


def noop_pipeline(target: str = "bench.tasks:noop") -> Pipeline:
    """One no-op task, triggered by every benchmark event."""
    return Pipeline("noop", (Trigger("bench.reading"),), (Task("t", "python", target),))


async def match(settings: Settings, count: int) -> float:
    await ensure_log_topics(settings, {"default"})
    await fill_events(settings, count)
    stopping = asyncio.Event()
    started = time.perf_counter()
    # The router's per-batch backpressure check is part of the row; its bound is out of
    # reach, since no control processor drains what this row routes.
    if Valve is None:
        router = EventRouter(settings, hundred_pipelines())
    else:
        valve = Valve("router", settings.topics.events, {PENDING_RUNS: 10**12})
        router = EventRouter(settings, hundred_pipelines(), valve)
    task = asyncio.create_task(router.run(stopping))
    try:
        async with CommitWatch(settings, "router", settings.topics.events) as watch:
            await until(watch.caught_up, 300, task)
        elapsed = time.perf_counter() - started
    finally:
        stopping.set()
        await task
    return count / elapsed


class _Count(RunObserver):
    def __init__(self) -> None:
        self.first_started = self.last_finished = 0.0
        self.finished = 0

    def run_started(self, run: Any) -> None:
        self.first_started = self.first_started or time.perf_counter()

    def run_finished(self, run: Any) -> None:
        self.finished += 1
        self.last_finished = time.perf_counter()


async def runs(settings: Settings, count: int) -> float:
    await ensure_log_topics(settings, {"default"})
    await fill_events(settings, count)
    counter = _Count()
    await serve_until(settings, noop_pipeline(), counter, lambda: counter.finished >= count)
    return count / (counter.last_finished - counter.first_started)


async def serve_until(
    settings: Settings, pipeline: Pipeline, observer: RunObserver, done: Callable[[], bool]
) -> None:
    """Run the runner on ``pipeline`` in this process until ``done()`` holds."""
    stopping = asyncio.Event()
    task = asyncio.create_task(serve(settings, [pipeline], [], observer, stopping))

    async def finished() -> bool:
        return done()

    try:
        await until(finished, 600, task, every=0.05)
    finally:
        stopping.set()
        await task
