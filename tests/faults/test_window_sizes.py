"""A backlog of small events into one batching trigger: every event is in exactly one run,
however big the backlog (a window's events travel in one Kafka message; the router used
to size them by their data alone, wrote a control record over the broker's limit, lost the
write's error and committed past every event: no run, the events gone)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from headwater.runner.settings import Settings
from tests.conftest import Start
from tests.kafkatools import pipeline_file, publish, read_all, read_topic

pytestmark = pytest.mark.integration

FILES = {
    "sensors.yaml": pipeline_file(
        "sensors",
        "sensor.reading",
        {"count": '{python: "sensor_tasks:count"}'},
        batch="{max_events: 100000, max_wait: 3s}",
    ),
    "sensor_tasks.py": """\
def count(ctx):
    return {"n": len(ctx.events), "ids": sorted(int(e["id"]) for e in ctx.events)[:1]}
""",
}
EVENTS = 6000
SUBJECT = "sensors/" + "s" * 240  # attributes far larger than the (empty) data


def counted(records: list[Any]) -> int:
    return sum(orjson.loads(r.value)["tasks"]["count"]["output"]["n"] for r in records)


async def test_a_backlog_into_one_window_is_split_by_size_and_nothing_is_lost(
    settings: Settings, headwater_dev: Start
) -> None:
    runner = headwater_dev(FILES)
    await runner.output_shows("headwater dev:")
    await publish(settings, "sensor.reading", range(EVENTS), subject=SUBJECT, key=b"one")
    completions = settings.topics.completions
    records = await read_topic(settings, completions, lambda rs: counted(rs) >= EVENTS, 90)
    assert all(orjson.loads(r.value)["status"] == "succeeded" for r in records)
    assert len(records) >= 2, "the backlog is bigger than one Kafka message"
    assert counted(await read_all(settings, completions)) == EVENTS  # none twice
    assert runner.process is not None and runner.process.poll() is None
