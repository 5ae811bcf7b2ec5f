"""``headwater trace`` against a real log: an event that matched nothing is told with
the first filter that failed and the value it saw; one that matched, with its run and
each task's attempts and outcome; an id the log does not hold says so (exit 1)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from headwater.runner.envelope import CloudEvent, to_kafka
from headwater.runner.log import kafka
from headwater.runner.runs.machine import run_id_for
from headwater.runner.settings import Settings
from tests.conftest import Start
from tests.kafkatools import read_topic, wait_caught_up
from tests.processes import cli

pytestmark = pytest.mark.integration

PIPELINE = """\
name: csv-report
triggers:
  - type: test.trace
    subject: "s3://*/incoming/*.csv"
    data: {size: {gt: 0}}
tasks:
  summarise: {python: "trace_tasks:summarise", retries: 1, backoff: {initial: 100ms}}
"""
TASKS = """\
def summarise(ctx):
    if ctx.attempt == 1:
        raise ValueError("not yet")
    return {"rows": ctx.event["data"]["size"]}
"""


async def test_trace_says_why_an_event_did_or_did_not_fire(
    settings: Settings, headwater_dev: Start, tmp_path: Path
) -> None:
    process = headwater_dev({"csv.yaml": PIPELINE, "trace_tasks.py": TASKS})
    await process.output_shows("headwater dev:")
    events = [
        CloudEvent("miss", "/s3", "test.trace", {"size": 5}, subject="s3://b/in/x.txt"),
        CloudEvent("empty", "/s3", "test.trace", {"size": 0}, subject="s3://b/incoming/e.csv"),
        CloudEvent("hit", "/s3", "test.trace", {"size": 12}, subject="s3://b/incoming/y.csv"),
    ]
    producer = kafka.producer(settings)
    await producer.start()
    try:
        for event in events:
            headers, value = to_kafka(event)
            await producer.send_and_wait(settings.topics.events, value, headers=headers)
    finally:
        await producer.stop()
    await read_topic(settings, settings.topics.completions, lambda r: len(r) >= 1)
    await wait_caught_up(settings, "router", settings.topics.events)
    folder = str(tmp_path / "pipelines")

    def trace(event_id: str) -> subprocess.CompletedProcess[str]:
        return cli(settings, "trace", event_id, folder)

    miss = trace("miss")
    assert miss.returncode == 0, miss.stderr
    assert (
        "csv-report: no match — trigger t-" in miss.stdout
        and 'subject "s3://b/in/x.txt" does not match "s3://*/incoming/*.csv"' in miss.stdout
    ), miss.stdout
    empty = trace("empty")
    assert "data.size is 0, not gt 0" in empty.stdout, empty.stdout
    hit = trace("hit")
    run_id = run_id_for("csv-report", "hit", "/s3")
    assert "csv-report: MATCHED trigger t-" in hit.stdout and f"-> run {run_id}" in hit.stdout
    assert "succeeded after" in hit.stdout
    assert "task summarise: succeeded, 2 attempt(s)" in hit.stdout, hit.stdout
    nothing = trace("no-such-event")
    assert nothing.returncode == 1 and "no event with id" in nothing.stdout

    listed = cli(settings, "runs", "--pipeline", "csv-report")
    assert listed.returncode == 0 and run_id in listed.stdout and "succeeded" in listed.stdout
    assert "1 run(s)" in listed.stdout, listed.stdout
    shown = cli(settings, "run", "show", run_id)
    assert shown.returncode == 0, shown.stderr
    assert f"run {run_id} of csv-report: succeeded" in shown.stdout
    assert "task summarise: succeeded, 2 attempt(s)" in shown.stdout
    assert 'output: {"rows":12}' in shown.stdout, shown.stdout
    assert cli(settings, "run", "show", "no-such-run").returncode == 1
    producer = kafka.producer(settings)
    await producer.start()
    try:
        await producer.send_and_wait(settings.topics.events, b"{not json")
    finally:
        await producer.stop()
    await wait_caught_up(settings, "router", settings.topics.events)
    dead = cli(settings, "dlq", "list")
    assert "structured CloudEvent is not valid JSON" in dead.stdout, dead.stdout
    assert "1 record(s)" in dead.stdout
    offset = dead.stdout.split()[0]
    one = cli(settings, "dlq", "show", offset)
    assert one.returncode == 0 and '"payload": "{not json"' in one.stdout, one.stdout
    assert "0 record(s)" in cli(settings, "dlq", "list", "--reason", "nothing like it").stdout
