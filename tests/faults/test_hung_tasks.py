"""Hung sync tasks never starve the others: each times out and fails its own run, and
every other sync task still runs (timed-out threads used to hold the event loop's default
pool, six of them enough to stop every other sync task)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from headwater.runner.settings import Settings
from tests.conftest import Start
from tests.kafkatools import by_trigger, pipeline_file, publish, read_topic

pytestmark = pytest.mark.integration

FILES = {
    "stuck.yaml": pipeline_file(
        "stuck", "test.stuck", {"work": '{python: "stuck_tasks:work", timeout: 1s}'}
    ),
    "stuck_tasks.py": """\
import threading

def work(ctx):
    if ctx.event["id"].startswith("hang"):
        threading.Event().wait()  # forever: no timeout can stop a thread
    return {"ok": True}
""",
}
HUNG = [f"hang-{i}" for i in range(40)]
QUICK = [f"ok-{i}" for i in range(20)]


async def test_hung_sync_tasks_fail_alone(settings: Settings, headwater_dev: Start) -> None:
    runner = headwater_dev(FILES)
    await runner.output_shows("headwater dev:")
    await publish(settings, "test.stuck", HUNG)

    def all_of(ids: list[str]) -> Any:
        return lambda records: set(ids) <= set(by_trigger(records))

    await read_topic(settings, settings.topics.completions, all_of(HUNG), within=90)
    await publish(settings, "test.stuck", QUICK)
    records = await read_topic(settings, settings.topics.completions, all_of(QUICK), within=60)
    runs = by_trigger(records)
    assert {i: runs.get(i) for i in HUNG if runs.get(i) != ["headwater.run.failed"]} == {}
    quick = {orjson.loads(r.value)["trigger"]["id"]: orjson.loads(r.value) for r in records}
    assert {i: quick[i].get("error") for i in QUICK if quick[i]["status"] != "succeeded"} == {}
    errors = [orjson.loads(r.value).get("error", "") for r in records]
    assert sum("timed out after 1s" in e for e in errors) == len(HUNG)
    assert runner.process is not None and runner.process.poll() is None
    assert runner.stop(timeout=20) == 0  # SIGTERM: it stops, hung threads or not
