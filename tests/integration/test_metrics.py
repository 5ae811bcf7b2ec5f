"""Prometheus metrics scraped from a real ``headwater dev --metrics`` during an end-to-end
run (a drop folder, a flaky task, a record that is no CloudEvent): the exposition parses
with prometheus-client's own parser and holds the expected series and counts, with
bounded labels only."""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from headwater.runner.log import kafka
from headwater.runner.settings import Settings
from tests.conftest import Start
from tests.kafkatools import publish, read_topic, wait_caught_up
from tests.lineage_schema import problems

pytestmark = pytest.mark.integration

DROPPED = """\
name: dropped
triggers:
  - type: headwater.file.created
tasks:
  count: {python: "metric_tasks:ok"}
"""
FLAKY = """\
name: flaky
triggers:
  - type: test.metrics
tasks:
  wobble: {python: "metric_tasks:wobble", retries: 1, backoff: {initial: 100ms, max: 100ms}}
"""
TASKS = """\
def ok(ctx):
    return {"ok": True}

def wobble(ctx):
    if ctx.attempt == 1:
        raise ValueError("first attempts fail")
    return {"attempt": ctx.attempt}
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_of_an_end_to_end_run(
    settings: Settings, headwater_dev: Start, tmp_path: Path
) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    port = free_port()
    process = headwater_dev(
        {"dropped.yaml": DROPPED, "flaky.yaml": FLAKY, "metric_tasks.py": TASKS},
        args=("--drop", str(drop), "--metrics", f"127.0.0.1:{port}"),
        env={"HEADWATER_LINEAGE": "1"},
    )
    await process.output_shows("headwater dev:")
    for n in range(3):
        (drop / f"f{n}.txt").write_text(f"file {n}\n")
    await publish(settings, "test.metrics", ["a", "b"])
    producer = kafka.producer(settings)
    await producer.start()
    try:
        await producer.send_and_wait(settings.topics.events, b"not a cloudevent")
    finally:
        await producer.stop()
    await read_topic(settings, settings.topics.completions, lambda r: len(r) >= 5)
    await wait_caught_up(settings, "router", settings.topics.events)
    samples = scrape(port)
    source = [labels for (name, labels) in samples if name == "headwater_source_events_total"]
    assert len(source) == 1 and dict(source[0])["cloud"] == "local", source
    source_name = dict(source[0])["source"]
    assert value(samples, "headwater_source_events_total", source=source_name, cloud="local") == 3
    assert value(samples, "headwater_source_bytes_total", source=source_name, cloud="local") > 0
    assert value(samples, "headwater_source_last_event_timestamp_seconds", source=source_name) > 0
    events = settings.topics.events
    assert value(samples, "headwater_router_events_total", topic=events) == 6
    assert value(samples, "headwater_router_run_requests_total", pipeline="dropped") == 3
    assert (
        value(samples, "headwater_runs_finished_total", pipeline="dropped", status="succeeded") == 3
    )
    assert (
        value(samples, "headwater_runs_finished_total", pipeline="flaky", status="succeeded") == 2
    )
    assert value(samples, "headwater_task_retries_total", pipeline="flaky", task="wobble") == 2
    durations = "headwater_task_duration_seconds_count"
    assert value(samples, durations, pipeline="flaky", task="wobble", outcome="failed") == 2
    assert value(samples, durations, pipeline="flaky", task="wobble", outcome="succeeded") == 2
    assert value(samples, "headwater_trigger_latency_seconds_count", pipeline="dropped") == 3
    assert value(samples, "headwater_dlq_records_total", component="router") == 1
    lags = [dict(labels) for (name, labels) in samples if name == "headwater_consumer_lag_records"]
    assert {"group", "topic", "partition"} <= set(lags[0]), lags
    every_label = {key for (_, labels) in samples for key, _ in labels}
    assert not every_label & {"run_id", "event_id", "id"}, every_label

    # OpenLineage: START and COMPLETE for each of the 5 runs, and for each task of it
    def ends(records: list[object]) -> int:
        events = [orjson.loads(r.value) for r in records]  # type: ignore[attr-defined]
        return sum(e["eventType"] == "COMPLETE" and "." not in e["job"]["name"] for e in events)

    lineage = await read_topic(settings, settings.topics.lineage, lambda r: ends(r) >= 5)
    kinds: dict[tuple[str, str], list[str]] = {}
    for record in lineage:
        event = orjson.loads(record.value)
        assert problems(event) == [], event  # valid against the OpenLineage schema
        kinds.setdefault((event["job"]["name"], event["run"]["runId"]), []).append(
            event["eventType"]
        )
    runs = [k for k in kinds if "." not in k[0]]
    assert len(runs) == 5 and all(kinds[k] == ["START", "COMPLETE"] for k in runs), kinds


async def test_json_log_lines_name_the_run_and_task(
    settings: Settings, headwater_dev: Start, tmp_path: Path
) -> None:
    process = headwater_dev(
        {"flaky.yaml": FLAKY, "metric_tasks.py": TASKS}, env={"HEADWATER_LOG_FORMAT": "json"}
    )
    await process.output_shows("headwater dev:")
    await publish(settings, "test.metrics", ["j"])
    await process.output_shows('"event":"run.finished"')
    lines = [orjson.loads(line) for line in process.output().splitlines() if line.startswith("{")]
    events = [line["event"] for line in lines if "event" in line]
    assert events[:1] == ["run.started"] and events[-1] == "run.finished", events
    attempts = [line for line in lines if line.get("event") == "task.attempt"]
    assert [(a["task"], a["attempt"], a["status"]) for a in attempts] == [
        ("wobble", 1, "retry_wait"),
        ("wobble", 2, "succeeded"),
    ]
    assert len({line["run_id"] for line in lines if "run_id" in line}) == 1
