"""One bad record or one bad task must not stop the stream or take the process down.

- a record on ``events`` with a null, non-UTF-8 or duplicated header goes to the DLQ with
  the reason, and every event after it is still routed;
- a task that calls ``sys.exit()`` (or raises any ``BaseException``) fails its attempt, not
  the ``headwater dev`` process;
- a task whose output is over the size limit fails its run with a completion that says the
  size and the limit; the worker goes on with the other runs.
"""

from __future__ import annotations

import orjson
import pytest

from headwater.runner.log import kafka
from headwater.runner.settings import Settings
from tests.conftest import Start
from tests.kafkatools import by_trigger, pipeline_file, publish, read_all, read_topic
from tests.processes import HeadwaterProcess

pytestmark = pytest.mark.integration

PIPELINE = pipeline_file("guarded", "test.job", {"work": '{python: "guarded_tasks:work"}'})
TASKS = """\
import sys

def work(ctx):
    kind = ctx.event["id"].split("-")[0]
    if kind == "exit":
        sys.exit(3)
    if kind == "interrupt":
        raise KeyboardInterrupt
    if kind == "huge":
        return {"blob": "x" * 3_000_000}
    return {"ok": True}
"""
FILES = {"guarded.yaml": PIPELINE, "guarded_tasks.py": TASKS}


@pytest.fixture
async def runner(headwater_dev: Start) -> HeadwaterProcess:
    process = headwater_dev(FILES)
    await process.output_shows("headwater dev:")
    return process


def done(ids: list[str]) -> object:
    return lambda records: all(i in by_trigger(records) for i in ids)


async def test_poison_headers_go_to_the_dlq_and_routing_goes_on(
    settings: Settings, runner: HeadwaterProcess
) -> None:
    await publish(settings, "test.job", ["before"])
    await read_topic(settings, settings.topics.completions, done(["before"]))
    producer = kafka.producer(settings)
    await producer.start()
    try:
        good = [("ce_specversion", b"1.0"), ("ce_source", b"/t"), ("ce_type", b"test.job")]
        poison = [
            [("ce_id", None), *good],  # a null header value
            [("ce_id", b"\xff\xfe"), *good],  # not UTF-8
            [("ce_id", b"dup-1"), ("ce_id", b"dup-2"), *good],  # the same header twice
            [("ce_id", b"nulls"), ("ce_type", None), ("ce_specversion", b"1.0")],
        ]
        for headers in poison:
            await producer.send_and_wait(settings.topics.events, b"{}", headers=headers)
    finally:
        await producer.stop()
    await publish(settings, "test.job", [f"after-{i}" for i in range(20)])
    after = [f"after-{i}" for i in range(20)]
    records = await read_topic(settings, settings.topics.completions, done(after))
    runs = by_trigger(records)
    assert all(runs[i] == ["headwater.run.succeeded"] for i in ["before", *after])
    dlq = await read_topic(settings, settings.topics.dlq, lambda rs: len(rs) >= 2)
    reasons = [orjson.loads(r.value)["reason"] for r in dlq]
    assert any("header" in reason for reason in reasons), reasons
    assert runner.process is not None and runner.process.poll() is None


async def test_a_task_that_exits_fails_its_run_not_the_process(
    settings: Settings, runner: HeadwaterProcess
) -> None:
    ids = ["exit-1", "interrupt-1", "ok-1", "exit-2", "ok-2"]
    await publish(settings, "test.job", ids)
    records = await read_topic(settings, settings.topics.completions, done(ids), within=90)
    runs = by_trigger(records)
    assert runs["ok-1"] == runs["ok-2"] == ["headwater.run.succeeded"]
    for failed in ("exit-1", "exit-2", "interrupt-1"):
        assert runs[failed] == ["headwater.run.failed"], runs
    errors = {orjson.loads(r.value)["trigger"]["id"]: orjson.loads(r.value) for r in records}
    assert "SystemExit" in errors["exit-1"]["error"]
    assert runner.process is not None and runner.process.poll() is None


async def test_an_oversized_output_fails_its_run_and_the_worker_goes_on(
    settings: Settings, runner: HeadwaterProcess
) -> None:
    await publish(settings, "test.job", ["huge-1", "ok-1"])
    records = await read_topic(settings, settings.topics.completions, done(["huge-1", "ok-1"]))
    await publish(settings, "test.job", ["ok-2"])
    records = await read_topic(settings, settings.topics.completions, done(["ok-2"]))
    runs = by_trigger(records)
    assert runs["huge-1"] == ["headwater.run.failed"]
    assert runs["ok-1"] == runs["ok-2"] == ["headwater.run.succeeded"]
    [huge] = [orjson.loads(r.value) for r in records if b"huge-1" in r.value]
    assert "bytes" in huge["error"] and "limit" in huge["error"], huge["error"]
    assert len(await read_all(settings, settings.topics.completions)) == 3
    assert runner.process is not None and runner.process.poll() is None
