"""Recovery never latches: a changelog record headwater cannot read goes to the DLQ and
is deleted from the changelog; the partition's runs go on (it used to fail the restore,
which was never retried: the control processor restarted and failed again, forever)."""

from __future__ import annotations

import orjson
import pytest

from headwater.runner.log import kafka
from headwater.runner.settings import Settings
from tests.conftest import Start
from tests.kafkatools import by_trigger, pipeline_file, publish, read_topic

pytestmark = pytest.mark.integration

FILES = {
    "steady.yaml": pipeline_file("steady", "test.job", {"work": '{python: "steady_tasks:work"}'}),
    "steady_tasks.py": "def work(ctx):\n    return {'ok': True}\n",
}
GARBAGE = [b"not json", b'{"run_id": 1}', b"[]", b'{"tasks": {"a": 3}}']


async def test_unreadable_changelog_records_go_to_the_dlq_and_runs_go_on(
    settings: Settings, headwater_dev: Start
) -> None:
    await kafka.ensure_topics(settings, {"default"})
    producer = kafka.producer(settings)
    await producer.start()
    try:
        for partition in range(settings.kafka.partitions):
            for n, value in enumerate(GARBAGE):
                key = f"garbage-{partition}-{n}".encode()
                await producer.send_and_wait(
                    settings.topics.runs, value, key=key, partition=partition
                )
            await producer.send_and_wait(
                settings.topics.runs, b"window junk", key=b"window:w", partition=partition
            )
    finally:
        await producer.stop()
    runner = headwater_dev(FILES)
    await runner.output_shows("headwater dev:")
    ids = [f"job-{i}" for i in range(30)]
    await publish(settings, "test.job", ids)
    records = await read_topic(
        settings, settings.topics.completions, lambda rs: len(by_trigger(rs)) >= len(ids)
    )
    assert all(types == ["headwater.run.succeeded"] for types in by_trigger(records).values())
    bad = settings.kafka.partitions * (len(GARBAGE) + 1)
    dlq = await read_topic(settings, settings.topics.dlq, lambda rs: len(rs) >= bad)
    entries = [orjson.loads(r.value) for r in dlq]
    assert all("changelog record is unreadable" in e["reason"] for e in entries), entries
    assert {e["origin"]["topic"] for e in entries} == {settings.topics.runs}
    assert runner.process is not None and runner.process.poll() is None
