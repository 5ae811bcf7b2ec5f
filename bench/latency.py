"""Latency at a fixed offered load: how long an event takes to start its run's task, and
until the run's completion event is visible to a ``read_committed`` subscriber.

While ``serve`` runs the one-task no-op pipeline in this process, a publisher process
(``bench.publisher``) offers events at a steady rate on a fresh topic prefix. Both clocks
start at the event's Kafka timestamp (CreateTime, read back from the events topic after
the run): the task notes when it started (``bench.tasks.noop_stamped``); a consumer of the
completions topic notes when each completion arrived. Before the load starts, one event is
sent through end to end so that no consumer group is still joining when the clock runs.

An event whose run had not finished when the waiting stopped counts as infinitely late: a
percentile that lands on one is reported as missing (the runner could not keep up). The
median of each hop (from the completion's run timestamps) says where the time goes.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import sys
import time
from collections.abc import Iterable
from datetime import datetime
from itertools import pairwise
from typing import Any

import orjson
from aiokafka import TopicPartition

from bench import tasks
from bench.kafkatools import ensure_log_topics, reading, record_times, until
from bench.processes import relay
from bench.stages import noop_pipeline
from headwater.runner.engine import serve
from headwater.runner.envelope import to_kafka
from headwater.runner.log import kafka
from headwater.runner.observe.hooks import RunObserver
from headwater.runner.settings import Settings

PRIME = -1  # the id of the event sent through before the load starts


async def latency(settings: Settings, rate: float, seconds: float, drain: float) -> dict[str, Any]:
    """Offer ``rate`` events/s for ``seconds``; wait up to ``drain`` more seconds for the
    runs to finish; returns the figures (latencies in ms)."""
    await ensure_log_topics(settings, {"default"})
    tasks.started_at.clear()
    completions = Completions(settings)
    stopping = asyncio.Event()
    watcher = asyncio.create_task(completions.watch(stopping))
    runner = asyncio.create_task(
        serve(settings, [noop_pipeline("bench.tasks:noop_stamped")], [], RunObserver(), stopping)
    )
    try:
        await _prime(settings)

        async def primed() -> bool:
            return str(PRIME) in completions.arrived

        await until(primed, 60, runner)
        offered = await _publish(settings.topics.events, rate, seconds)
        deadline = time.monotonic() + drain
        while len(completions.arrived) < 1 + offered["sent"] and time.monotonic() < deadline:
            if runner.done() or watcher.done():
                break
            await asyncio.sleep(0.1)
    finally:
        stopping.set()
        await runner
        await watcher
    created = await record_times(settings, settings.topics.events)
    created.pop(str(PRIME))
    started, arrived = tasks.started_at, completions.arrived
    to_start = [started[i] - t for i, t in created.items() if i in started]
    to_completion = [arrived[i] - t for i, t in created.items() if i in arrived]
    return {
        "offered_per_s": rate,
        # as Kafka saw it: events over the span of their timestamps (ms precision)
        "achieved_per_s": _rate(created.values()),
        "publisher_behind_ms": offered["behind_ms"],
        "events": len(created),
        "completed": len(to_completion),
        "completed_per_s": _rate(arrived[i] for i in created if i in arrived),
        **{f"start_{k}_ms": v for k, v in percentiles(to_start, len(created)).items()},
        **{f"completion_{k}_ms": v for k, v in percentiles(to_completion, len(created)).items()},
        "hops_p50_ms": completions.hops(created, started),
    }


def percentiles(seconds: list[float], total: int) -> dict[str, float | None]:
    """Nearest-rank p50, p99 and max, in ms, of ``total`` latencies of which only
    ``seconds`` are known; the others are infinitely late, so a rank among them is None."""
    ordered = sorted(seconds)

    def rank(q: float) -> float | None:
        i = max(1, math.ceil(q * total)) - 1
        return ordered[i] * 1000 if i < len(ordered) else None

    return {"p50": rank(0.50), "p99": rank(0.99), "max": rank(1.0)}


class Completions:
    """A ``read_committed`` subscriber of the completions topic that notes, by trigger
    event id, when each completion arrived and when its run was created and finished."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.arrived: dict[str, float] = {}
        self.runs: dict[str, tuple[float, float]] = {}

    async def watch(self, stopping: asyncio.Event) -> None:
        settings, topic = self._settings, self._settings.topics.completions
        consumer = kafka.consumer(settings, group=None)
        await consumer.start()
        try:
            partitions = [TopicPartition(topic, p) for p in range(settings.kafka.partitions)]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            while not stopping.is_set():
                batch = await consumer.getmany(timeout_ms=100)
                now = time.time()
                for records in batch.values():
                    for record in records:
                        self._note(orjson.loads(record.value), now)
        finally:
            await consumer.stop()

    def _note(self, data: dict[str, Any], now: float) -> None:
        event_id = data["trigger"]["id"]
        self.arrived.setdefault(event_id, now)
        self.runs[event_id] = (_epoch(data["started_at"]), _epoch(data["finished_at"]))

    def hops(self, created: dict[str, float], started: dict[str, float]) -> dict[str, float]:
        """Median ms of each hop: event -> run created (router, control), -> task started
        (control's commit, worker), -> run finished (result, control), -> completion
        visible (control's commit, subscriber). Run times have ms precision."""
        hops: dict[str, list[float]] = {
            "event_to_run_created": [],
            "run_created_to_task_start": [],
            "task_start_to_run_finished": [],
            "run_finished_to_visible": [],
        }
        for event_id, (run_created, run_finished) in self.runs.items():
            if event_id not in created or event_id not in started:
                continue
            points = (
                created[event_id],
                run_created,
                started[event_id],
                run_finished,
                self.arrived[event_id],
            )
            for hop, (a, b) in zip(hops.values(), pairwise(points), strict=True):
                hop.append((b - a) * 1000)
        return {name: statistics.median(ms) for name, ms in hops.items() if ms}


def _rate(times: Iterable[float]) -> float | None:
    """Events per second over the span of their times."""
    ordered = sorted(times)
    span = ordered[-1] - ordered[0] if ordered else 0.0
    return (len(ordered) - 1) / span if span else None


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


async def _prime(settings: Settings) -> None:
    event = reading(PRIME)
    headers, value = to_kafka(event)
    producer = kafka.producer(settings)
    await producer.start()
    try:
        await producer.send_and_wait(
            settings.topics.events, value, key=(event.subject or "").encode(), headers=headers
        )
    finally:
        await producer.stop()


async def _publish(topic: str, rate: float, seconds: float) -> dict[str, float]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.publisher",
        topic,
        str(rate),
        str(seconds),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    relay("the publisher", err)
    if process.returncode != 0:
        raise RuntimeError(f"the publisher exited with status {process.returncode} (see the log)")
    report: dict[str, float] = orjson.loads(out)
    return report
