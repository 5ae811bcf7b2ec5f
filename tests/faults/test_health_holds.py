"""Health checks end to end: a pipeline that needs S3 (``needs_services: [aws.s3]``) on a
moto server of the test's own, stopped and started again while runs arrive.

While moto is down the worker reports ``headwater.service.unhealthy`` on ``hw.status``,
holds the dependent pipeline's requests (its task never starts: no attempt is spent, no
run fails) while an unrelated pipeline on the same route keeps completing; once moto is
back the probe sees it, ``headwater.service.healthy`` follows and every held run
completes exactly once. Without the hold (the services removed from the file) the runs
fail while moto is down: the task itself calls S3 and has no retries (checked by hand).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from headwater.runner.settings import Settings
from tests.conftest import Start
from tests.integration.test_probes import aws, free_port
from tests.kafkatools import by_trigger, publish, read_all, read_topic
from tests.servers.services import MotoServer

pytestmark = pytest.mark.integration

TASKS = """\
import os, pathlib, boto3

HERE = pathlib.Path(__file__).parent

def list_buckets(ctx):
    with (HERE / "attempts").open("a") as out:
        out.write(ctx.event["id"] + "\\n")
    client = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    return {"buckets": len(client.list_buckets()["Buckets"])}

def hello(ctx):
    return {"hello": ctx.event["id"]}
"""
NEEDS_S3 = """\
name: needs-s3
needs_services: [aws.s3]
triggers:
  - type: test.s3
tasks:
  list: {python: "health_tasks:list_buckets"}
"""
UNRELATED = """\
name: unrelated
triggers:
  - type: test.other
tasks:
  hello: {python: "health_tasks:hello"}
"""


@pytest.fixture
def moto(tmp_path: Path) -> Iterator[MotoServer]:
    server = MotoServer(port=free_port(), state=tmp_path / "moto")
    server.start()
    yield server
    server.stop()


def types(records: list[Any]) -> list[str]:
    return [dict(r.headers)["ce_type"].decode() for r in records]


@pytest.mark.timeout(240)
async def test_a_dependent_pipeline_pauses_and_resumes_with_its_service(
    settings: Settings, headwater_dev: Start, moto: MotoServer
) -> None:
    files = {"s3.yaml": NEEDS_S3, "other.yaml": UNRELATED, "health_tasks.py": TASKS}
    env = {**aws(moto), "HEADWATER_HEALTH_INTERVAL": "1s", "HEADWATER_HEALTH_TIMEOUT": "1s"}
    runner = headwater_dev(files, env=env)
    attempts = runner.log.parent / "pipelines" / "attempts"
    await runner.output_shows("headwater dev:")
    await publish(settings, "test.s3", ["before"])
    await read_topic(settings, settings.topics.completions, lambda rs: len(rs) >= 1)

    moto.stop()
    await read_topic(
        settings,
        settings.topics.status,
        lambda rs: "headwater.service.unhealthy" in types(rs),
        within=30,
    )
    held = [f"held-{i}" for i in range(5)]
    others = [f"other-{i}" for i in range(5)]
    await publish(settings, "test.s3", held)
    await publish(settings, "test.other", others)
    records = await read_topic(
        settings,
        settings.topics.completions,
        lambda rs: set(others) <= set(by_trigger(rs)),
        within=60,
    )
    await asyncio.sleep(3)  # the held runs have had time to start, if they were going to
    done = by_trigger(await read_all(settings, settings.topics.completions))
    assert not [e for e in held if e in done], f"runs finished while S3 was down: {done}"
    assert attempts.read_text().split() == ["before"], "a held task was started"
    assert all(done[e] == ["headwater.run.succeeded"] for e in others), records

    moto.start()
    records = await read_topic(
        settings,
        settings.topics.completions,
        lambda rs: set(held) <= set(by_trigger(rs)),
        within=60,
    )
    done = by_trigger(records)
    assert {e: done[e] for e in held} == {e: ["headwater.run.succeeded"] for e in held}
    assert sorted(attempts.read_text().split()) == sorted(["before", *held])
    status = types(await read_all(settings, settings.topics.status))
    assert status.index("headwater.service.unhealthy") < status.index("headwater.service.healthy")
    assert "service aws.s3" in runner.output() and "service.unhealthy" in runner.output()
