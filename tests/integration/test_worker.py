"""A worker against the real Kafka: a slow task holds back no other task's result, and a
SIGKILL while it runs loses no run and completes none twice (its request's offset was not
committed, so the restarted worker executes it again; the results reported after it are
read again and ignored), and executes no finished task again: the requests done past the
committed offset are named in the commit's metadata, and the next owner skips them (on
the code before, the quick requests behind the slow one in its partition ran twice)."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import TopicPartition

from headwater.runner.log.lag import committed_offsets
from headwater.runner.log.progress import done_offsets
from headwater.runner.settings import Settings
from tests.kafkatools import pipeline_file, poll, publish, read_all, read_topic
from tests.processes import HeadwaterProcess

pytestmark = pytest.mark.integration

PIPELINE = pipeline_file("held", "test.job", {"work": '{python: "held_tasks:work"}'})
TASKS = """\
import asyncio, pathlib

HERE = pathlib.Path(__file__).parent

async def work(ctx):
    with (HERE / "executions").open("a") as out:
        out.write(ctx.event["id"] + "\\n")
    if ctx.event["id"] == "slow":  # runs until the test releases it
        (HERE / "slow.started").touch()
        while not (HERE / "slow.release").exists():
            await asyncio.sleep(0.05)
    return {}
"""
QUICK = 50


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "held.yaml").write_text(PIPELINE)
    (tmp_path / "held_tasks.py").write_text(TASKS)
    return tmp_path


@pytest.fixture
def runner(settings: Settings, folder: Path) -> Iterator[HeadwaterProcess]:
    process = HeadwaterProcess(["dev", str(folder)], settings, folder / "dev.log").start()
    try:
        yield process
    finally:
        (folder / "slow.release").touch()
        process.stop()


def triggers(records: list[Any]) -> list[str]:
    return [orjson.loads(record.value)["trigger"]["id"] for record in records]


async def test_a_slow_task_holds_back_no_result_and_a_kill_while_it_runs_loses_none(
    settings: Settings, folder: Path, runner: HeadwaterProcess
) -> None:
    await runner.output_shows("headwater dev:")
    await publish(settings, "test.job", ["slow"], key=b"one")
    deadline = time.monotonic() + 30
    while not (folder / "slow.started").exists():
        assert time.monotonic() < deadline, f"the slow task never started:\n{runner.output()}"
        await asyncio.sleep(0.1)

    await publish(settings, "test.job", range(QUICK), key=b"one")
    topic = settings.topics.completions
    early = await read_topic(settings, topic, lambda rs: len(triggers(rs)) >= QUICK, within=30)
    assert "slow" not in triggers(early)

    async def named_done() -> tuple[bool, int]:  # every quick request's commit went through
        tps = [TopicPartition(settings.topics.tasks("default"), p) for p in range(3)]
        group = settings.topics.group("workers.default")
        found = await committed_offsets(settings, group, tps)
        done = sum(m.offset + len(done_offsets(m.offset, m.metadata)) for m in found.values())
        return done >= QUICK, done

    await poll(named_done, 30, "the quick requests' commits")
    runner.kill()
    (folder / "slow.release").touch()
    restarted = HeadwaterProcess(["dev", str(folder)], settings, folder / "again.log").start()
    try:
        await read_topic(settings, topic, lambda rs: "slow" in triggers(rs), within=60)
    finally:
        restarted.stop()
    per_event = collections.Counter(triggers(await read_all(settings, topic)))
    assert sorted(per_event) == sorted(["slow", *map(str, range(QUICK))])
    assert [event for event, n in per_event.items() if n != 1] == []
    executions = collections.Counter((folder / "executions").read_text().split())
    assert executions.pop("slow") == 2  # killed while it ran: executed again
    assert [event for event, n in executions.items() if n != 1] == [], "executed again"
