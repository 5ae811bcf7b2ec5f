"""Routes, heartbeats and failover with real processes started by ``headwater run``:
every worker of route ``a`` is SIGKILLed while tasks flow; its tasks go on on fallback
``b``, the first within 30 s of ``a``'s last heartbeat (measured), every run completes
once, and ``a`` takes its tasks back when it returns. Residency: with ``eu-1`` dead and
only ``us-1`` alive, an ``eu`` task never runs on ``us-1`` and runs once ``eu-2`` is up."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from headwater.runner.envelope import CloudEvent, to_kafka
from headwater.runner.log import kafka
from headwater.runner.settings import Settings
from tests.kafkatools import read_all, read_topic, wait_for_members
from tests.processes import HeadwaterProcess

pytestmark = pytest.mark.integration

TASKS = """\
import os, time

def note(ctx):
    return {"instance": os.environ["HEADWATER_INSTANCE"], "started": time.time()}
"""


def setup(settings: Settings, tmp_path: Path, pipelines: dict[str, str]) -> Path:
    folder = tmp_path / "pipelines"
    folder.mkdir()
    for name, text in pipelines.items():
        (folder / name).write_text(text)
    (folder / "route_tasks.py").write_text(TASKS)
    path = tmp_path / "headwater.yaml"
    path.write_text(
        f"""\
kafka: {{bootstrap: "{settings.kafka.bootstrap}", topic_prefix: "{settings.topics.prefix}"}}
pipelines: pipelines
state_dir: state
routes:
  - {{name: a, region: region-1, fallback: [b]}}
  - {{name: b, region: region-2}}
  - {{name: eu-1, region: eu-west-1, residency: eu, fallback: [eu-2]}}
  - {{name: eu-2, region: eu-central-1, residency: eu}}
  - {{name: us-1, region: us-east-1, residency: us}}
failover: {{after: 5s}}
"""
    )
    return path


def start(settings: Settings, tmp_path: Path, name: str, *args: str) -> HeadwaterProcess:
    config = str(tmp_path / "headwater.yaml")
    return HeadwaterProcess(
        ["run", "--config", config, *args],
        settings,
        tmp_path / f"{name}.log",
        env={"HEADWATER_INSTANCE": name},
    ).start()


async def send(settings: Settings, kind: str, ids: range) -> None:
    producer = kafka.producer(settings)
    await producer.start()
    try:
        for i in ids:
            headers, value = to_kafka(CloudEvent(str(i), "/test", kind, {}))
            await producer.send_and_wait(settings.topics.events, value, headers=headers)
    finally:
        await producer.stop()


def completions(records: list[Any]) -> list[dict[str, Any]]:
    return [orjson.loads(r.value) for r in records]


async def last_heartbeat(settings: Settings, route: str) -> float:
    beats = [orjson.loads(r.value) for r in await read_all(settings, settings.topics.heartbeats)]
    return max(b["at"] for b in beats if b["route"] == route)


async def test_a_dead_route_fails_over_within_30s_and_takes_its_tasks_back(
    settings: Settings, tmp_path: Path
) -> None:
    pipeline = "name: flow\ntriggers: [{type: test.flow}]\ntasks:\n"
    pipeline += "  work: {python: 'route_tasks:note', route: a}\n"
    setup(settings, tmp_path, {"flow.yaml": pipeline})
    processes = {
        "core": start(settings, tmp_path, "core", "--role", "router", "--role", "control"),
        "a1": start(settings, tmp_path, "a1", "--role", "worker", "--routes", "a"),
        "b1": start(settings, tmp_path, "b1", "--role", "worker", "--routes", "b"),
    }
    sent = 0

    async def flow(until: asyncio.Event) -> None:
        nonlocal sent
        while not until.is_set():
            await send(settings, "test.flow", range(sent, sent + 5))
            sent += 5
            await asyncio.sleep(0.5)

    try:
        for process in processes.values():
            await process.output_shows("headwater run: roles")
        await wait_for_members(settings, ("workers.a", "workers.b"), 1)
        stop_flow = asyncio.Event()
        flowing = asyncio.create_task(flow(stop_flow))
        await read_topic(settings, settings.topics.completions, lambda r: len(r) >= 10)
        processes["a1"].kill()
        killed = time.time()

        def on(route: str, after: float) -> Any:
            def check(records: list[Any]) -> bool:
                return any(
                    c["tasks"]["work"]["ran_on"]["route"] == route
                    and c["tasks"]["work"]["output"]["started"] > after
                    for c in completions(records)
                )

            return check

        await read_topic(settings, settings.topics.completions, on("b", killed), within=60)
        last = await last_heartbeat(settings, "a")
        done = completions(await read_all(settings, settings.topics.completions))
        first_on_b = min(
            c["tasks"]["work"]["output"]["started"]
            for c in done
            if c["tasks"]["work"]["ran_on"]["route"] == "b"
        )
        took = first_on_b - last
        print(f"failover: first task on b {took:.1f} s after a's last heartbeat")
        assert took < 30, took
        assert all(
            c["tasks"]["work"]["ran_on"].get("for_route") == "a"
            for c in done
            if c["tasks"]["work"]["ran_on"]["route"] == "b"
        )
        processes["a1"] = start(settings, tmp_path, "a1", "--role", "worker", "--routes", "a")
        back = time.time()
        await read_topic(settings, settings.topics.completions, on("a", back + 5), within=60)
        stop_flow.set()
        await flowing
        await read_topic(
            settings,
            settings.topics.completions,
            lambda r: len({c["trigger"]["id"] for c in completions(r)}) >= sent,
            within=60,
        )
    finally:
        for process in processes.values():
            with contextlib.suppress(AssertionError):
                process.stop()
    done = completions(await read_all(settings, settings.topics.completions))
    per_event = collections.Counter(c["trigger"]["id"] for c in done)
    assert sorted(per_event, key=int) == [str(i) for i in range(sent)]
    assert set(per_event.values()) == {1}, per_event
    assert {c["status"] for c in done} == {"succeeded"}
    status = [
        dict(r.headers).get("ce_type") for r in await read_all(settings, settings.topics.status)
    ]
    assert b"headwater.route.down" in status and b"headwater.route.up" in status


async def test_an_eu_task_never_runs_outside_the_eu_and_runs_when_an_eu_route_is_up(
    settings: Settings, tmp_path: Path
) -> None:
    pipeline = "name: gdpr\nresidency: eu\ntriggers: [{type: test.gdpr}]\ntasks:\n"
    pipeline += "  scrub: {python: 'route_tasks:note', route: eu-1}\n"
    us_pipeline = "name: local\ntriggers: [{type: test.local}]\ntasks:\n"
    us_pipeline += "  count: {python: 'route_tasks:note', route: us-1}\n"
    setup(settings, tmp_path, {"gdpr.yaml": pipeline, "local.yaml": us_pipeline})
    processes = {
        "core": start(settings, tmp_path, "core", "--role", "router", "--role", "control"),
        "us": start(settings, tmp_path, "us", "--role", "worker", "--routes", "us-1"),
    }
    try:
        for process in processes.values():
            await process.output_shows("headwater run: roles")
        await send(settings, "test.gdpr", range(3))
        await send(settings, "test.local", range(3))
        # us-1 works (its own tasks run) while eu-1 is down with no eu route alive
        await read_topic(settings, settings.topics.completions, lambda r: len(r) >= 3)
        await asyncio.sleep(7)  # past the failover time: still nothing may run the eu tasks
        done = completions(await read_all(settings, settings.topics.completions))
        assert {c["pipeline"] for c in done} == {"local"}, done

        def down(records: list[Any]) -> bool:
            return any(
                dict(r.headers).get("ce_type") == b"headwater.route.down"
                and orjson.loads(r.value)["route"] == "eu-1"
                and orjson.loads(r.value)["served_by"] is None
                for r in records
            )

        await read_topic(settings, settings.topics.status, down, within=30)
        processes["eu2"] = start(settings, tmp_path, "eu2", "--role", "worker", "--routes", "eu-2")
        await read_topic(
            settings,
            settings.topics.completions,
            lambda r: sum(c["pipeline"] == "gdpr" for c in completions(r)) >= 3,
            within=60,
        )
    finally:
        for process in processes.values():
            with contextlib.suppress(AssertionError):
                process.stop()
    done = completions(await read_all(settings, settings.topics.completions))
    gdpr = [c for c in done if c["pipeline"] == "gdpr"]
    assert len(gdpr) == 3
    for c in gdpr:
        ran = c["tasks"]["scrub"]["ran_on"]
        assert (ran["route"], ran["region"], ran["for_route"]) == ("eu-2", "eu-central-1", "eu-1")
        assert c["tasks"]["scrub"]["output"]["instance"] == "eu2"
    assert "gdpr" not in processes["us"].output()
