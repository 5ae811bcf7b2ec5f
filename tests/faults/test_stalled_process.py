"""A process that stalls past the session timeout (a paused VM, a stop-the-world pause)
and then resumes must not commit work its successor already did. Two ``headwater dev``
processes share the log; one stalls itself (``stall/sitecustomize.py``: SIGSTOP right
after its control consumer fetched a task's result, before acting on it) while the other
takes its partitions and completes every run; then it is resumed.

Before per-partition transactional producers, the resumed process went on with the batch
it held: its transaction (under a transactional id of its own) and its offsets (aiokafka
commits them without the group generation, which the broker accepts) committed, and the
run it held completed twice. Now the successor's producer for that partition, same
transactional id, fenced it: its writes fail with ``ProducerFenced``, it starts again from
the changelog, and each run has one completion.

The router, stalled after fetching events for a batching window, is the same case: what
its resumed transaction writes again, the control processor drops by event id, so every
event is in exactly one window."""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from headwater.runner.settings import Settings
from tests.conftest import Start
from tests.kafkatools import (
    eventually,
    pipeline_file,
    publish,
    read_all,
    read_topic,
    wait_for_members,
)

pytestmark = pytest.mark.integration

STALL = Path(__file__).with_name("stall")
GROUPS = ("router", "control", "workers.default")
FILES = {
    "quick.yaml": pipeline_file("quick", "test.job", {"work": '{python: "quick_tasks:work"}'}),
    "quick_tasks.py": 'def work(ctx):\n    return {"event": ctx.event["id"]}\n',
}


def stopped(pid: int) -> bool:
    """Whether process ``pid`` is stopped by a signal (state T in /proc)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] == "T"


def runs_per_event(records: list[Any]) -> Counter[str]:
    return Counter(orjson.loads(record.value)["trigger"]["id"] for record in records)


async def test_a_process_resumed_after_a_stall_commits_nothing_its_successor_did(
    settings: Settings, headwater_dev: Start, tmp_path: Path
) -> None:
    armed = tmp_path / "stall"
    path = os.pathsep.join(p for p in (str(STALL), os.environ.get("PYTHONPATH")) if p)
    stalling = headwater_dev(
        FILES, env={"HW_TEST_STALL": str(armed), "PYTHONPATH": path, "HEADWATER_INSTANCE": "a"}
    )
    await stalling.output_shows("headwater dev:")
    other = headwater_dev(FILES, env={"HEADWATER_INSTANCE": "b"})
    await other.output_shows("headwater dev:")
    await wait_for_members(settings, GROUPS, 2)
    assert stalling.process is not None

    armed.touch()
    await publish(settings, "test.job", range(20))
    marker = Path(f"{armed}.stalled")
    await eventually(lambda: marker.exists() and stopped(stalling.process.pid), "the stall")

    # its successor takes its partitions after the session timeout and finishes every run
    topic = settings.topics.completions
    await read_topic(settings, topic, lambda records: len(runs_per_event(records)) >= 20, 90)
    stalling.process.send_signal(signal.SIGCONT)

    # back in the groups, it works on: later events complete too (completions share one
    # partition, so reading them all means the resumed process's transaction has ended)
    await wait_for_members(settings, GROUPS, 2, within=90)
    await publish(settings, "test.job", range(20, 40))
    await read_topic(settings, topic, lambda records: len(runs_per_event(records)) >= 40, 90)
    per_event = runs_per_event(await read_all(settings, topic))
    assert sorted(per_event, key=int) == [str(i) for i in range(40)]
    assert {event: n for event, n in per_event.items() if n != 1} == {}
    assert stalling.process.poll() is None and other.process is not None
    assert other.process.poll() is None


BATCHING = {
    "sensors.yaml": pipeline_file(
        "sensors",
        "sensor.reading",
        {"ids": '{python: "sensor_tasks:ids"}'},
        batch="{max_events: 5, max_wait: 2s}",
    ),
    "sensor_tasks.py": 'def ids(ctx):\n    return {"ids": [e["id"] for e in ctx.events]}\n',
}


def batched_ids(records: list[Any]) -> Counter[str]:
    found: Counter[str] = Counter()
    for record in records:
        run = orjson.loads(record.value)
        assert run["status"] == "succeeded", run
        found.update(run["tasks"]["ids"]["output"]["ids"])
    return found


async def test_a_router_resumed_after_a_stall_puts_no_event_in_two_windows(
    settings: Settings, headwater_dev: Start, tmp_path: Path
) -> None:
    armed = tmp_path / "stall"
    path = os.pathsep.join(p for p in (str(STALL), os.environ.get("PYTHONPATH")) if p)
    env = {"HW_TEST_STALL": str(armed), "HW_TEST_STALL_ON": "events:", "PYTHONPATH": path}
    stalling = headwater_dev(BATCHING, env={**env, "HEADWATER_INSTANCE": "a"})
    await stalling.output_shows("headwater dev:")
    other = headwater_dev(BATCHING, env={"HEADWATER_INSTANCE": "b"})
    await other.output_shows("headwater dev:")
    await wait_for_members(settings, GROUPS, 2)
    assert stalling.process is not None

    armed.touch()
    events = [f"r{i}" for i in range(40)]
    for i in range(0, 40, 5):  # keys spread over the partitions, each one a window
        await publish(settings, "sensor.reading", events[i : i + 5], key=f"k{i}".encode())
    marker = Path(f"{armed}.stalled")
    await eventually(lambda: marker.exists() and stopped(stalling.process.pid), "the stall")

    topic = settings.topics.completions
    await read_topic(settings, topic, lambda records: len(batched_ids(records)) >= 40, 90)
    stalling.process.send_signal(signal.SIGCONT)
    try:
        await wait_for_members(settings, GROUPS, 2, within=90)
    except AssertionError:
        stalling.process.send_signal(signal.SIGUSR1)  # its tasks' stacks into its log
        await asyncio.sleep(2)
        raise
    later = [f"s{i}" for i in range(10)]
    await publish(settings, "sensor.reading", later, key=b"later")
    await read_topic(settings, topic, lambda records: len(batched_ids(records)) >= 50, 90)
    seen = batched_ids(await read_all(settings, topic))
    assert seen == Counter(events + later), seen
    assert stalling.process.poll() is None and other.process is not None
    assert other.process.poll() is None
