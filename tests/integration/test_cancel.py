"""``headwater run cancel`` against real processes: a running command is killed and its
run ends ``headwater.run.cancelled`` with the task that needed it never run; a request
waiting for the worker's only slot is never started; a second cancel, or one for a run
that does not exist, says so (exit 1); the worker goes on with the next run."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from headwater.runner.envelope import CloudEvent, to_kafka
from headwater.runner.log import kafka
from headwater.runner.runs.machine import run_id_for
from headwater.runner.settings import Settings
from tests.conftest import Start
from tests.kafkatools import poll, read_topic
from tests.processes import cli

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

SLEEPER = """\
import json, os, pathlib, sys, time

context = json.load(sys.stdin)
here = pathlib.Path(__file__).parent
(here / f"pid-{context['run_id']}").write_text(str(os.getpid()))
time.sleep(context["event"]["data"]["sleep"])
print(json.dumps({"slept": context["event"]["data"]["sleep"]}))
"""
PIPELINE = """\
name: slow
triggers: [{{type: test.cancel}}]
tasks:
  sleep: {{command: ["{python}", "{sleeper}"], timeout: 5m}}
  after: {{python: "cancel_tasks:after", needs: [sleep]}}
"""
TASKS = """\
import pathlib

def after(ctx):
    (pathlib.Path(__file__).parent / f"after-{ctx.run_id}").touch()
    return {}
"""


def event_of(record: Any) -> dict[str, Any]:
    return dict(orjson.loads(record.value))


def of_run(event: dict[str, Any], run_id: str) -> bool:
    """Whether a lineage event is about the run or one of its tasks (a child run)."""
    parent = (event["run"].get("facets") or {}).get("parent") or {}
    return run_id in (event["run"]["runId"], (parent.get("run") or {}).get("runId"))


def run_of(record: Any) -> str:
    return str(event_of(record)["run"]["runId"])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie has not been reaped by its parent yet: it no longer runs
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return stat[0] != "Z"


async def test_cancel_stops_the_running_task_and_the_waiting_one(
    settings: Settings, headwater_dev: Start, tmp_path: Path
) -> None:
    folder = tmp_path / "pipelines"
    folder.mkdir()
    (folder / "sleeper.py").write_text(SLEEPER)
    process = headwater_dev(
        {
            "slow.yaml": PIPELINE.format(python=sys.executable, sleeper=folder / "sleeper.py"),
            "cancel_tasks.py": TASKS,
        },
        env={"HEADWATER_WORKER_CONCURRENCY": "1", "HEADWATER_LINEAGE": "1"},
    )
    await process.output_shows("headwater dev:")
    producer = kafka.producer(settings)
    async with kafka.started(producer):
        for event_id, sleep in (("e1", 120), ("e2", 120)):
            event = CloudEvent(event_id, "/t", "test.cancel", {"sleep": sleep})
            headers, value = to_kafka(event)
            await producer.send_and_wait(settings.topics.events, value, headers=headers)
    ids = [run_id_for("slow", "e1", "/t"), run_id_for("slow", "e2", "/t")]

    async def started() -> tuple[bool, list[str]]:
        found = [run for run in ids if (folder / f"pid-{run}").exists()]
        return bool(found), sorted(p.name for p in folder.iterdir())

    await poll(started, 60, "no run's command started")
    await process.output_shows("started by test.cancel e1")  # both in the run table
    await process.output_shows("started by test.cancel e2")
    # r1 has the only slot (whichever came first), r2's request waits for it
    r1 = next(run for run in ids if (folder / f"pid-{run}").exists())
    r2 = next(run for run in ids if run != r1)
    # lineage says the run started while it runs (written as it started, not at its end)
    lineage = await read_topic(
        settings, settings.topics.lineage, lambda r: any(run_of(x) == r1 for x in r)
    )
    assert [e["eventType"] for e in map(event_of, lineage) if e["run"]["runId"] == r1] == ["START"]
    pid = int((folder / f"pid-{r1}").read_text())

    # r2 waits for the only slot: cancelled, it must never start once the slot frees.
    waiting = await asyncio.to_thread(cli, settings, "run", "cancel", r2, "--reason", "not needed")
    assert waiting.returncode == 0, waiting.stderr
    assert f"run {r2} cancelled" in waiting.stdout, waiting.stdout
    running = await asyncio.to_thread(cli, settings, "run", "cancel", r1, "--reason", "wrong input")
    assert running.returncode == 0, running.stderr
    assert f"run {r1} cancelled; tasks not finished: sleep, after" in running.stdout

    async def killed() -> tuple[bool, int]:
        return not alive(pid), pid

    await poll(killed, 20, "the cancelled run's command is still running")

    producer = kafka.producer(settings)  # the worker goes on with the next run
    async with kafka.started(producer):
        headers, value = to_kafka(CloudEvent("e3", "/t", "test.cancel", {"sleep": 0}))
        await producer.send_and_wait(settings.topics.events, value, headers=headers)
    completions = await read_topic(
        settings, settings.topics.completions, lambda records: len(records) >= 3
    )
    runs = {}
    for record in completions:
        run = orjson.loads(record.value)
        runs[run["run_id"]] = run
    assert runs[r1]["status"] == "cancelled" and runs[r2]["status"] == "cancelled"
    assert dict(completions[0].headers)["ce_type"] == b"headwater.run.cancelled"
    assert runs[r1]["error"] == "cancelled: wrong input"
    assert {n: t["status"] for n, t in runs[r1]["tasks"].items()} == {
        "sleep": "cancelled",
        "after": "cancelled",
    }
    r3 = run_id_for("slow", "e3", "/t")
    assert runs[r3]["status"] == "succeeded", runs[r3]
    assert not (folder / f"pid-{r2}").exists(), "the waiting run's task started"
    assert not (folder / f"after-{r1}").exists() and (folder / f"after-{r3}").exists()

    again = await asyncio.to_thread(cli, settings, "run", "cancel", r1)
    assert again.returncode == 1 and f"run {r1} already cancelled" in again.stderr, again
    long = await asyncio.to_thread(cli, settings, "run", "cancel", r3, "--reason", "x" * 2001)
    assert long.returncode == 2 and "at most 2,000" in long.stderr, long
    unknown = await asyncio.to_thread(cli, settings, "run", "cancel", "no-such-run")
    assert unknown.returncode == 1 and "no run 'no-such-run'" in unknown.stderr
    listed = await asyncio.to_thread(cli, settings, "runs", "--status", "cancelled")
    assert r1 in listed.stdout and r2 in listed.stdout and r3 not in listed.stdout
    assert "2 run(s)" in listed.stdout, listed.stdout
    shown = await asyncio.to_thread(cli, settings, "run", "show", r1)
    assert f"run {r1} of slow: cancelled" in shown.stdout, shown.stdout

    def ended(records: list[Any]) -> bool:
        return any(run_of(r) == r1 and event_of(r)["eventType"] == "ABORT" for r in records)

    lineage = await read_topic(settings, settings.topics.lineage, ended)
    kinds = [(e["job"]["name"], e["eventType"]) for e in map(event_of, lineage) if of_run(e, r1)]
    assert ("slow", "ABORT") in kinds and ("slow.sleep", "ABORT") in kinds, kinds
    assert not [k for k in kinds if k[0] == "slow.after"], kinds  # never started: no events
