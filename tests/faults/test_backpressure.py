"""Backpressure end to end: a flood of 40k events for a slow route stays in the log, not
in the runner's memory, and every event still runs once when the route speeds up (the 1M
flood is ``make bench``'s).

A real ``headwater dev`` runs one pipeline whose task sleeps half a second (16 at a
time: ~32 runs/s) while 40,000 events wait in ``events``. With the bounds set low
(2,000 runs pending, 1,000 task requests), the router must stop: the control topic holds
only about a bound's worth of run requests (plus one fetched batch that crossed it) while
the events wait, and the process's memory stays flat. On the code before the router had a
valve, the router moved the whole flood into ``control`` within seconds and the control
processor held a run for each event (checked once, when the test offered 100k: the
control-topic assertion failed with ~100k records). Then the task goes fast and the
backlog drains: one completion per event, and ``hw.status`` shows the router paused,
then resumed.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
import pytest
from aiokafka import TopicPartition

from headwater.runner.log import kafka
from headwater.runner.log.lag import LagReader, runs_in
from headwater.runner.settings import Settings
from tests.conftest import Start
from tests.kafkatools import poll, publish, read_all, read_topic

pytestmark = [pytest.mark.integration, pytest.mark.timeout(480)]

EVENTS = 40_000
PENDING_RUNS, PENDING_TASKS = 2_000, 1_000
ROUTER_BATCH = 5_000  # the router's fetch: what it may route past the bound in one go
WATCH_S = 12.0

TASKS = """\
import pathlib, time

HERE = pathlib.Path(__file__).parent

def work(ctx):
    if not (HERE / "fast").exists():
        time.sleep(0.5)
    return {}
"""
PIPELINE = """\
name: slow
triggers: [{type: test.flood}]
tasks:
  work: {python: "slow_tasks:work", timeout: 30s}
"""


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def control_records(settings: Settings) -> int:
    """Records written to ``control`` so far (run requests, results, timers)."""
    probe = kafka.consumer(settings, group=None)
    await probe.start()
    try:
        topic = settings.topics.control
        tps = [TopicPartition(topic, p) for p in range(settings.kafka.partitions)]
        return sum((await probe.end_offsets(tps)).values())
    finally:
        await probe.stop()


async def test_a_flood_for_a_slow_route_waits_in_the_log(
    settings: Settings, headwater_dev: Start, tmp_path: Path
) -> None:
    env = {
        "HEADWATER_MAX_PENDING_RUNS": str(PENDING_RUNS),
        "HEADWATER_MAX_PENDING_TASKS": str(PENDING_TASKS),
        "HEADWATER_WORKER_CONCURRENCY": "16",
    }
    process = headwater_dev({"slow.yaml": PIPELINE, "slow_tasks.py": TASKS}, env=env)
    await process.output_shows("headwater dev:")
    await publish(settings, "test.flood", range(EVENTS))
    assert process.process is not None
    pid = process.process.pid

    topics = settings.topics
    wanted = [(topics.group("router"), topics.events), (topics.group("control"), topics.control)]
    samples = []  # (events not routed, control records, runs in progress, RSS)
    async with LagReader(settings) as reader:
        deadline = time.monotonic() + WATCH_S
        while time.monotonic() < deadline:
            lags = await reader.read(wanted)
            waiting = sum(p.lag for p in lags[wanted[0]].values())
            in_progress = sum(runs_in(p.metadata) for p in lags[wanted[1]].values())
            samples.append((waiting, await control_records(settings), in_progress, rss_mb(pid)))
            await asyncio.sleep(0.5)

    report = "\n".join(f"{s}" for s in samples)
    # The flood waits in the log: the router took at most its bound and one more batch.
    assert min(s[0] for s in samples) >= EVENTS - PENDING_RUNS - 2 * ROUTER_BATCH, report
    assert max(s[1] for s in samples) <= PENDING_RUNS + 2 * ROUTER_BATCH, report
    assert max(s[2] for s in samples) <= PENDING_RUNS + 2 * ROUTER_BATCH, report
    # ... and not in memory: the process does not grow while the backlog waits.
    settled = [s[3] for s in samples[len(samples) // 3 :]]
    assert max(settled) - min(settled) < 25, report

    print(
        f"\nbackpressure: {EVENTS:,} events offered; while they waited: events not routed "
        f">= {min(s[0] for s in samples):,}, control records <= {max(s[1] for s in samples):,},"
        f" runs in progress <= {max(s[2] for s in samples):,}, RSS {min(settled):.0f}-"
        f"{max(settled):.0f} MB (bounds: {PENDING_RUNS:,} runs, {PENDING_TASKS:,} tasks)"
    )
    (tmp_path / "pipelines" / "fast").touch()  # the route speeds up: the backlog drains
    completions = await read_topic(
        settings,
        topics.completions,
        lambda records: len(records) >= EVENTS,
        within=400,
        stalled=30,
    )
    by_id: dict[str, int] = {}
    for record in completions:
        run = orjson.loads(record.value)
        assert run["status"] == "succeeded", run
        by_id[run["trigger"]["id"]] = by_id.get(run["trigger"]["id"], 0) + 1
    assert len(by_id) == EVENTS and set(by_id.values()) == {1}

    async def resumed() -> tuple[bool, list[str]]:
        status = await read_all(settings, topics.status)
        seen = [
            dict(r.headers)["ce_type"].decode()
            for r in status
            if dict(r.headers).get("ce_subject") == b"router"
        ]
        return seen[:2] == ["headwater.flow.paused", "headwater.flow.resumed"], seen

    await poll(resumed, 30, "the router's pause and resume on hw.status")
