"""Batching triggers against the real Kafka and a real ``headwater dev`` process: one run
per window, every event in exactly one run, also across a SIGKILL of the runner."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from headwater.runner.settings import Settings
from tests.kafkatools import pipeline_file, publish, read_topic
from tests.processes import HeadwaterProcess

pytestmark = pytest.mark.integration

PIPELINES = {
    "counted.yaml": pipeline_file(
        "counted",
        "test.reading",
        {"collect": '{python: "batch_tasks:collect"}'},
        batch="{max_events: 50, max_wait: 3s}",
    ),
    "debounced.yaml": pipeline_file(
        "debounced",
        "test.upload",
        {"collect": '{python: "batch_tasks:collect"}'},
        batch="{key: subject, quiet_for: 1s}",
    ),
    "held.yaml": pipeline_file(
        "held",
        "test.held",
        {"collect": '{python: "batch_tasks:collect"}'},
        batch="{max_events: 100, max_wait: 5m}",
    ),
}
TASKS = """\
async def collect(ctx):
    return {"ids": [event["id"] for event in ctx.events]}
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    for name, text in {**PIPELINES, "batch_tasks.py": TASKS}.items():
        (tmp_path / name).write_text(text)
    return tmp_path


@pytest.fixture
def runner(settings: Settings, folder: Path) -> Iterator[HeadwaterProcess]:
    process = HeadwaterProcess(["dev", str(folder)], settings, folder / "headwater.log").start()
    process.wait_for_output("headwater dev:")
    try:
        yield process
    finally:
        process.stop()


async def runs_of(settings: Settings, pipeline: str, events: int) -> list[dict[str, Any]]:
    """The completions of ``pipeline`` once their runs hold ``events`` events in all (and
    a moment longer, so that an extra run would show)."""

    def mine(records: list[Any]) -> list[dict[str, Any]]:
        found = [orjson.loads(r.value) for r in records]
        return [c for c in found if c["pipeline"] == pipeline]

    def held(records: list[Any]) -> int:
        return sum(len(c["tasks"]["collect"]["output"]["ids"]) for c in mine(records))

    topic = settings.topics.completions
    await read_topic(settings, topic, lambda rs: held(rs) >= events)
    await asyncio.sleep(1.5)
    return mine(await read_topic(settings, topic, lambda rs: held(rs) >= events))


def ids_of(completions: list[dict[str, Any]]) -> list[str]:
    return [i for c in completions for i in c["tasks"]["collect"]["output"]["ids"]]


async def test_a_batching_trigger_runs_once_per_window_with_every_event_once(
    settings: Settings, runner: HeadwaterProcess
) -> None:
    await publish(settings, "test.reading", range(230), key=b"k")
    completions = await runs_of(settings, "counted", 230)
    assert sorted(ids_of(completions), key=int) == [str(i) for i in range(230)]
    windows = sorted(len(c["tasks"]["collect"]["output"]["ids"]) for c in completions)
    assert windows == [30, 50, 50, 50, 50]
    assert all(c["status"] == "succeeded" for c in completions)
    assert all(c["trigger"]["type"] == "headwater.batch" for c in completions)


async def test_debounce_by_key_runs_once_per_quiet_key(
    settings: Settings, runner: HeadwaterProcess
) -> None:
    await publish(settings, "test.upload", range(3), subject="a", key=b"k")
    await publish(settings, "test.upload", range(3, 5), subject="b", key=b"k")
    await asyncio.sleep(0.3)
    await publish(settings, "test.upload", range(5, 6), subject="a", key=b"k")  # a is not quiet yet
    completions = await runs_of(settings, "debounced", 6)
    by_key = {c["trigger"]["subject"]: sorted(ids_of([c])) for c in completions}
    assert by_key == {"a": ["0", "1", "2", "5"], "b": ["3", "4"]}


async def test_an_open_window_survives_a_sigkill_of_the_runner(
    settings: Settings, runner: HeadwaterProcess
) -> None:
    await publish(settings, "test.held", range(150), key=b"k")
    first = await runs_of(settings, "held", 100)  # one full window; 50 events wait in the next
    assert len(first) == 1
    runner.kill()
    runner.start()  # what it has not read yet waits in Kafka
    await publish(settings, "test.held", range(150, 300), key=b"k")
    completions = await runs_of(settings, "held", 300)
    counted = collections.Counter(ids_of(completions))
    assert sorted(counted, key=int) == [str(i) for i in range(300)]
    assert set(counted.values()) == {1}, "an event was in two runs"
    assert [len(ids_of([c])) for c in completions] == [100, 100, 100]
