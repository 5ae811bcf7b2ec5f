"""A pipeline triggered by another's completion, against the real Kafka: it runs once
per upstream completion, sees the upstream run's outputs, and a redelivered completion
(the same record written to the completions topic again) starts nothing."""

from __future__ import annotations

import collections

import orjson
import pytest

from headwater.runner.log import kafka
from headwater.runner.settings import Settings
from tests.conftest import Start
from tests.kafkatools import publish, read_all, read_topic, wait_caught_up

pytestmark = pytest.mark.integration

UPSTREAM = """\
name: extract
triggers:
  - type: test.extract
tasks:
  count: {python: "chain_tasks:count"}
"""
DOWNSTREAM = """\
name: report
triggers:
  - type: headwater.run.succeeded
    subject: extract
    data: {tasks.count.output.rows: {gt: 0}}
tasks:
  report: {python: "chain_tasks:report"}
"""
TASKS = """\
def count(ctx):
    return {"rows": int(ctx.event["id"])}

def report(ctx):
    upstream = ctx.event["data"]
    rows = upstream["tasks"]["count"]["output"]["rows"]
    return {"upstream_run": upstream["run_id"], "rows": rows}
"""
EVENTS = 6  # event 0 has no rows: the filter on the upstream's output leaves it out


async def test_a_completion_triggers_the_downstream_pipeline_once(
    settings: Settings, headwater_dev: Start
) -> None:
    process = headwater_dev(
        {"extract.yaml": UPSTREAM, "report.yaml": DOWNSTREAM, "chain_tasks.py": TASKS}
    )
    await process.output_shows("headwater dev:")
    await publish(settings, "test.extract", range(EVENTS))
    topic = settings.topics.completions

    def reports(records: list[object]) -> list[dict[str, object]]:
        values = [orjson.loads(r.value) for r in records]  # type: ignore[attr-defined]
        return [v for v in values if v["pipeline"] == "report"]

    await read_topic(settings, topic, lambda records: len(reports(records)) >= EVENTS - 1)
    records = await read_all(settings, topic)
    upstream = [r for r in records if orjson.loads(r.value)["pipeline"] == "extract"]
    assert len(upstream) == EVENTS
    # Every upstream completion delivered again, as a redelivering producer would.
    producer = kafka.producer(settings)
    await producer.start()
    try:
        for record in upstream:
            await producer.send_and_wait(
                topic, record.value, key=record.key, headers=list(record.headers)
            )
    finally:
        await producer.stop()
    await wait_caught_up(settings, "router", topic)
    await wait_caught_up(settings, "control", settings.topics.control)
    done = reports(await read_all(settings, topic))
    per_upstream = collections.Counter(d["trigger"]["id"] for d in done)
    assert len(per_upstream) == EVENTS - 1 and set(per_upstream.values()) == {1}, per_upstream
    upstream_runs = {orjson.loads(r.value)["run_id"] for r in upstream}
    for d in done:
        output = d["tasks"]["report"]["output"]
        assert d["status"] == "succeeded"
        assert (
            output["upstream_run"] == d["trigger"]["id"] and output["upstream_run"] in upstream_runs
        )
        assert output["rows"] > 0
