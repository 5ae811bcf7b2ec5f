"""Secret references resolved where they are used, against moto's Secrets Manager: a
task's ``with:`` gets ``${aws-sm:name#key}`` and ``${env:...}`` values, a task that
echoes them publishes ``***``, and no log, completion or DLQ record holds them; a
reference that cannot be resolved fails the attempt saying which, never the value."""

from __future__ import annotations

import uuid

import boto3
import orjson
import pytest

from headwater.runner.settings import Settings
from tests.conftest import Start
from tests.kafkatools import publish, read_all, read_topic

pytestmark = pytest.mark.integration

PIPELINE = """\
name: secretive
triggers:
  - type: test.secret
tasks:
  use:
    python: secret_tasks:use
    with: {token: "${aws-sm:hw-api#token}", plain: "${env:HW_PLAIN}", note: "not secret"}
  missing:
    python: secret_tasks:use
    with: {token: "${aws-sm:hw-nope#token}", plain: "${env:HW_PLAIN}", note: "x"}
"""
TASKS = """\
def use(ctx):
    token = ctx.params["token"]
    return {"token": token, "length": len(token), "plain": ctx.params["plain"],
            "note": ctx.params["note"]}
"""


async def test_secrets_reach_the_task_and_nothing_else(
    settings: Settings, headwater_dev: Start, aws_env: dict[str, str]
) -> None:
    token, plain = "sm-" + uuid.uuid4().hex, "env-" + uuid.uuid4().hex
    client = boto3.client("secretsmanager", endpoint_url=aws_env["AWS_ENDPOINT_URL"])
    client.create_secret(
        Name="hw-api", SecretString=orjson.dumps({"token": token, "other": "x"}).decode()
    )
    process = headwater_dev(
        {"secretive.yaml": PIPELINE, "secret_tasks.py": TASKS}, env={"HW_PLAIN": plain}
    )
    await process.output_shows("headwater dev:")
    await publish(settings, "test.secret", ["one"])
    [record] = await read_topic(settings, settings.topics.completions, lambda r: len(r) >= 1)
    completion = orjson.loads(record.value)
    used = completion["tasks"]["use"]
    assert used["status"] == "succeeded"
    assert used["output"] == {
        "token": "***",
        "length": len(token),  # the task had the real value
        "plain": "***",
        "note": "not secret",
    }
    missing = completion["tasks"]["missing"]
    assert missing["status"] == "failed"
    assert "secret reference ${aws-sm:hw-nope#token}" in missing["error"]
    assert "ResourceNotFoundException" in missing["error"]
    process.stop()
    said = [process.output()]
    for topic in (settings.topics.completions, settings.topics.dlq, settings.topics.control):
        said += [
            bytes(r.value or b"").decode("utf-8", "replace")
            for r in await read_all(settings, topic)
        ]
    assert [text for text in said if token in text or plain in text] == []
