"""Schedules against the real Kafka, with real processes: exactly one run per tick on two
processes while one is SIGKILLed and restarted, and the ticks missed while every process
was down caught up when one comes back (``catchup``), and the ticks of a broker outage
run late, once each."""

from __future__ import annotations

import asyncio
import collections
import itertools
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from headwater.runner.settings import Settings
from tests.kafkatools import read_all, read_topic, wait_for_members
from tests.processes import HeadwaterProcess
from tests.servers.services import KafkaServer

pytestmark = pytest.mark.integration

PERIOD = 2.0
TASKS = """\
import os

def tick(ctx):
    data = ctx.event["data"]
    return {"scheduled": data["scheduled"], "late": data["late"],
            "instance": os.environ["HEADWATER_INSTANCE"]}
"""


def pipeline(catchup: str) -> str:
    return f"""\
name: ticking
schedule:
  every: {PERIOD:g}s
  catchup: {catchup}
tasks:
  tick: {{python: "ticking_tasks:tick"}}
"""


def runner(settings: Settings, tmp_path: Path, name: str) -> HeadwaterProcess:
    return HeadwaterProcess(
        ["dev", str(tmp_path / "pipelines")],
        settings,
        tmp_path / f"{name}.log",
        env={"HEADWATER_INSTANCE": name, "PYTHONPATH": str(tmp_path / "pipelines")},
    )


def write(tmp_path: Path, catchup: str) -> None:
    folder = tmp_path / "pipelines"
    folder.mkdir()
    (folder / "ticking.yaml").write_text(pipeline(catchup))
    (folder / "ticking_tasks.py").write_text(TASKS)


def ticks(records: list[Any]) -> list[dict[str, Any]]:
    out = []
    for record in records:
        completion = orjson.loads(record.value)
        assert completion["status"] == "succeeded", completion
        output = completion["tasks"]["tick"]["output"]
        assert output["scheduled"] == completion["trigger"]["id"]
        out.append(output)
    return out


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


async def ticked_after(settings: Settings, at: float, within: float) -> None:
    """Wait for the run of a tick scheduled after ``at`` to complete."""
    await read_topic(
        settings,
        settings.topics.completions,
        lambda records: any(epoch(d["scheduled"]) > at for d in ticks(records)),
        within=within,
    )


def between(done: list[dict[str, Any]], start: float, end: float) -> list[dict[str, Any]]:
    """The ticks scheduled in (start, end), in order."""
    inside = (d for d in done if start < epoch(d["scheduled"]) < end)
    return sorted(inside, key=lambda d: d["scheduled"])


def assert_every_tick_once(done: list[dict[str, Any]]) -> list[float]:
    """Each tick ran once, and none between the first and the last is missing."""
    per_tick = collections.Counter(d["scheduled"] for d in done)
    assert [t for t, n in per_tick.items() if n != 1] == [], per_tick
    times = sorted(epoch(t) for t in per_tick)
    gaps = [(a, b) for a, b in itertools.pairwise(times) if b - a != PERIOD]
    assert gaps == [], f"ticks missing between {gaps}"
    return times


async def test_one_run_per_tick_on_two_processes_across_a_sigkill_and_restart(
    settings: Settings, tmp_path: Path
) -> None:
    write(tmp_path, "{policy: all, window: 10m}")
    processes = {name: runner(settings, tmp_path, name).start() for name in ("one", "two")}
    try:
        for process in processes.values():
            await process.output_shows("headwater dev:")
        await wait_for_members(settings, ("control",), 2)
        started = time.monotonic()
        await asyncio.sleep(12)
        # Each is killed once (one of them owns the schedule's partition) and restarted.
        for name in ("two", "one"):
            processes[name].kill()
            await asyncio.sleep(6)
            processes[name] = runner(settings, tmp_path, name).start()
            await processes[name].output_shows("headwater dev:")
            await asyncio.sleep(12)
        await asyncio.sleep(max(0.0, 60 - (time.monotonic() - started)))
        ended = time.time()
        # the last ticks' runs complete (and nothing after ``ended`` is counted)
        await read_topic(
            settings,
            settings.topics.completions,
            lambda records: any(epoch(d["scheduled"]) >= ended for d in ticks(records)),
            within=60,
        )
    finally:
        for process in processes.values():
            process.stop()
    done = ticks(await read_all(settings, settings.topics.completions))
    times = assert_every_tick_once(done)
    assert times[-1] - times[0] >= 55, f"{len(times)} ticks from {times[0]} to {times[-1]}"
    assert {d["instance"] for d in done} == {"one", "two"}
    said = processes["one"].output() + processes["two"].output()
    assert "Traceback" not in said


async def test_ticks_missed_while_every_process_was_down_are_caught_up(
    settings: Settings, tmp_path: Path
) -> None:
    write(tmp_path, "{policy: all, window: 1m}")
    process = runner(settings, tmp_path, "solo").start()
    try:
        await read_topic(settings, settings.topics.completions, lambda r: len(r) >= 2, within=60)
        process.kill()
        down_at = time.time()
        await asyncio.sleep(4 * PERIOD + 1)
        process = runner(settings, tmp_path, "solo").start()
        back_at = time.time()
        await ticked_after(settings, back_at + PERIOD, within=60)
    finally:
        process.stop()
    done = ticks(await read_all(settings, settings.topics.completions))
    assert_every_tick_once(done)
    missed = between(done, down_at, back_at)
    assert len(missed) >= 4, done
    # caught up late; the latest when the process came back may count as on time
    assert all(d["late"] for d in missed[:-1]), missed


@pytest.mark.timeout(300)
async def test_a_broker_outage_delays_ticks_and_loses_or_doubles_none(
    settings: Settings, tmp_path: Path, kafka_server: KafkaServer
) -> None:
    write(tmp_path, "{policy: all, window: 10m}")
    process = runner(settings, tmp_path, "solo").start()
    try:
        await read_topic(settings, settings.topics.completions, lambda r: len(r) >= 2, within=60)
        kafka_server.stop()
        down_at = time.time()
        try:
            await asyncio.sleep(5 * PERIOD)  # the scheduler cannot tell anyone the time
            assert process.process is not None and process.process.poll() is None
        finally:
            kafka_server.start()
        back_at = time.time()
        await ticked_after(settings, back_at + PERIOD, within=120)
    finally:
        process.stop()
    done = ticks(await read_all(settings, settings.topics.completions))
    assert_every_tick_once(done)  # the outage's ticks ran late, once each, none missing
    during = between(done, down_at, back_at)
    assert len(during) >= 4, done
    assert "Traceback" not in process.output()
