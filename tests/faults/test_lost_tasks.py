"""A dispatched task whose result never comes (its request lost, its worker gone) is not
``running`` forever: after twice its timeout (and up to a minute) the attempt counts as
failed and is retried, or fails the run. Here the request is deleted from its topic while
the only process is down, so nothing would ever execute it again."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

from headwater.runner.settings import Settings
from tests.conftest import Start
from tests.kafkatools import pipeline_file, publish, read_topic

pytestmark = pytest.mark.integration

FILES = {
    "lossy.yaml": pipeline_file(
        "lossy",
        "test.lossy",
        {"work": '{python: "lossy_tasks:work", retries: 1, timeout: 2s, backoff: {initial: 0.1}}'},
    ),
    "lossy_tasks.py": """\
import asyncio, pathlib

HERE = pathlib.Path(__file__).parent

async def work(ctx):
    if ctx.attempt == 1:
        (HERE / "started").touch()
        await asyncio.sleep(3600)  # killed with its process before its timeout
    return {"attempt": ctx.attempt}
""",
}
ENV = {"HEADWATER_DEDUP_RETENTION": "4s"}  # the sweep that finds lost attempts: every 1 s


async def delete_all(settings: Settings, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap)
    await admin.start()
    try:
        await admin.delete_records(  # -1: everything up to the end
            {
                TopicPartition(topic, p): RecordsToDelete(before_offset=-1)
                for p in range(settings.kafka.partitions)
            }
        )
    finally:
        await admin.close()


async def test_a_lost_task_request_is_retried_after_its_deadline(
    settings: Settings, headwater_dev: Start
) -> None:
    runner = headwater_dev(FILES, env=ENV)
    await runner.output_shows("headwater dev:")
    await publish(settings, "test.lossy", ["one"])
    folder = runner.log.parent / "pipelines"
    while not (folder / "started").exists():
        await runner.output_shows("headwater dev:", within=1)
    runner.kill()  # the attempt's result will never come ...
    await delete_all(settings, settings.topics.tasks("default"))  # ... nor will it run again
    headwater_dev({}, env=ENV)

    def finished(records: list[Any]) -> bool:
        return any(orjson.loads(r.value)["trigger"]["id"] == "one" for r in records)

    [record] = await read_topic(settings, settings.topics.completions, finished, within=60)
    completion = orjson.loads(record.value)
    assert completion["status"] == "succeeded", completion
    assert completion["tasks"]["work"]["attempts"] == 2
    assert completion["tasks"]["work"]["output"] == {"attempt": 2}
