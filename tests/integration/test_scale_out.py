"""Two runner processes on one log, against the real Kafka: they share the work, and every
event still triggers exactly one run when one of them is SIGKILLed while runs are under
way (its partitions move to the other after the session timeout; the transaction it left
open is aborted by the broker). With ``HEADWATER_STANDBY=1`` the survivor kept warm copies
of the partitions it did not own, and takes them over from local state, not by a replay."""

from __future__ import annotations

import collections
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from headwater.runner.settings import Settings
from tests.kafkatools import pipeline_file, publish, read_all, read_topic, wait_for_members
from tests.processes import HeadwaterProcess

pytestmark = pytest.mark.integration

PIPELINE = pipeline_file("shared", "test.job", {"work": '{python: "shared_tasks:work"}'})
TASKS = """\
import asyncio, os

async def work(ctx):
    await asyncio.sleep(0.5)  # two workers of 32 slots: ~5 s for the 600 runs
    return {"instance": os.environ["HEADWATER_INSTANCE"]}
"""
EVENTS = 600
GROUPS = ("router", "control", "workers.default")


@pytest.fixture(params=["0", "1"], ids=["plain", "standby"])
def runners(
    settings: Settings, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[dict[str, HeadwaterProcess]]:
    (tmp_path / "shared.yaml").write_text(PIPELINE)
    (tmp_path / "shared_tasks.py").write_text(TASKS)
    processes = {
        name: HeadwaterProcess(
            ["dev", str(tmp_path)],
            settings,
            tmp_path / f"{name}.log",
            env={"HEADWATER_INSTANCE": name, "HEADWATER_STANDBY": request.param},
        ).start()
        for name in ("one", "two")
    }
    try:
        yield processes
    finally:
        for process in processes.values():
            process.stop()


def completions(records: list[Any]) -> list[dict[str, Any]]:
    return [orjson.loads(record.value) for record in records]


async def test_two_processes_share_the_runs_and_a_sigkill_of_one_loses_or_doubles_none(
    settings: Settings, runners: dict[str, HeadwaterProcess]
) -> None:
    for process in runners.values():
        await process.output_shows("headwater dev:")
    await wait_for_members(settings, GROUPS, 2)
    await publish(settings, "test.job", range(EVENTS))
    topic = settings.topics.completions

    def both_worked(records: list[Any]) -> bool:
        return {c["tasks"]["work"]["output"]["instance"] for c in completions(records)} == {
            "one",
            "two",
        }

    seen = await read_topic(settings, topic, both_worked)
    standby = runners["one"].env["HEADWATER_STANDBY"] == "1"
    if standby:
        await runners["one"].output_shows("standby caught up")
    restores_before = runners["one"].output().count("run table ")
    runners["two"].kill()
    assert len(seen) < EVENTS, "the runs were no longer under way at the kill"

    await read_topic(
        settings,
        topic,
        lambda records: len({c["trigger"]["id"] for c in completions(records)}) >= EVENTS,
        within=90,
    )
    done = completions(await read_all(settings, topic))
    per_event = collections.Counter(c["trigger"]["id"] for c in done)
    assert sorted(per_event, key=int) == [str(i) for i in range(EVENTS)]
    assert [i for i, n in per_event.items() if n != 1] == []  # exactly one run per event
    assert all(c["status"] == "succeeded" for c in done)
    taken = runners["one"].output().split("\n")
    after_kill = [line for line in taken if "run table " in line][restores_before:]
    assert after_kill, "the survivor restored nothing after the kill"
    if standby:  # taken over from its warm copies: a short tail instead of a rebuild
        assert any("restored from local state" in line for line in after_kill), after_kill
