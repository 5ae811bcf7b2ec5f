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
import contextlib
import dataclasses
import math
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable
from datetime import datetime
from itertools import pairwise
from typing import Any

import orjson
from aiokafka import TopicPartition

from bench import tasks
from bench.kafkatools import ensure_log_topics, reading, record_times, until
from bench.processes import relay, stop
from bench.scaleout import PARTITIONS, STOP_WITHIN, stable
from bench.stages import noop_pipeline
from headwater.runner.engine import serve
from headwater.runner.envelope import to_kafka
from headwater.runner.flow.backoff import pause
from headwater.runner.log import kafka
from headwater.runner.observe.hooks import RunObserver
from headwater.runner.settings import Settings

PRIME = -1  # the id of the event sent through before the load starts


async def latency(
    settings: Settings, rate: float, seconds: float, drain: float, processes: int = 0
) -> dict[str, Any]:
    """Offer ``rate`` events/s for ``seconds``; wait up to ``drain`` more seconds for the
    runs to finish; returns the figures (latencies in ms). The runner runs in this process
    (``processes`` 0), or as that many processes of their own, on topics of
    ``PARTITIONS`` partitions, timed once every consumer group is stable with all of
    them."""
    if processes:
        settings = dataclasses.replace(
            settings, kafka=dataclasses.replace(settings.kafka, partitions=PARTITIONS)
        )
    await ensure_log_topics(settings, {"default"})
    tasks.started_at.clear()
    completions = Completions(settings)
    stopping = asyncio.Event()
    watcher = asyncio.create_task(completions.watch(stopping))
    runner = asyncio.create_task(
        _in_processes(settings, processes, stopping)
        if processes
        else serve(
            settings, [noop_pipeline("bench.tasks:noop_stamped")], [], RunObserver(), stopping
        )
    )
    try:
        if processes:
            groups = [settings.topics.group(g) for g in ("router", "control", "workers.default")]
            while not await stable(settings, groups, processes):
                if runner.done():
                    runner.result()
                await asyncio.sleep(0.2)
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
    started = completions.started if processes else tasks.started_at
    arrived = completions.arrived
    to_start = [started[i] - t for i, t in created.items() if i in started]
    to_completion = [arrived[i] - t for i, t in created.items() if i in arrived]
    return {
        "processes": processes or 1,
        "own": bool(processes),
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
        #: when the task started, where it says so in its output (``tasks.started``)
        self.started: dict[str, float] = {}

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
        output = data["tasks"]["t"]["output"]
        if isinstance(output, dict) and "started" in output:
            self.started.setdefault(event_id, output["started"])

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


async def _in_processes(settings: Settings, processes: int, stopping: asyncio.Event) -> None:
    """``processes`` runner processes (``bench.runner_process ... stamped``) until
    ``stopping`` is set."""
    with contextlib.ExitStack() as files:
        outputs = [files.enter_context(tempfile.TemporaryFile()) for _ in range(processes)]
        state = files.enter_context(tempfile.TemporaryDirectory(prefix="hw-bench-state-"))
        children = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.runner_process",
                settings.topics.prefix,
                "stamped",
                env={
                    **os.environ,
                    "HEADWATER_INSTANCE": f"bench-latency-{i}",
                    "HEADWATER_KAFKA_PARTITIONS": str(settings.kafka.partitions),
                    "HEADWATER_STATE_DIR": state,
                },
                stdout=output,
                stderr=asyncio.subprocess.STDOUT,
            )
            for i, output in enumerate(outputs)
        ]
        try:
            while not stopping.is_set():
                for child in children:
                    if child.returncode is not None:
                        raise RuntimeError(f"a runner process exited ({child.returncode})")
                await pause(stopping, 0.2)
        finally:
            for i, (child, output) in enumerate(zip(children, outputs, strict=True)):
                await stop(child, STOP_WITHIN)
                output.seek(0)
                relay(f"latency runner process {i}", output.read())


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


async def _main(rate: int, processes: int, seconds: float) -> None:
    from bench.kafkatools import delete_topics
    from bench.run import _latency_row, settings_for

    prefix = f"lat{uuid.uuid4().hex[:8]}."
    settings = settings_for(prefix)
    try:
        row = _latency_row(await latency(settings, rate, seconds, 60.0, processes))
    finally:
        await delete_topics(settings, prefix)
    print(f"{row.name}: {row.value} {row.unit}; {row.note}")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="one latency row of make bench")
    parser.add_argument("rate", type=int, help="offered events/s")
    parser.add_argument("--processes", type=int, default=0, help="runner processes (0: here)")
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    asyncio.run(_main(args.rate, args.processes, args.seconds))
