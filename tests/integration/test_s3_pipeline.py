"""End to end against the real servers: S3 (moto) -> SQS -> bridge -> Kafka -> runner ->
tasks calling the S3 API -> one completion event, read as a downstream service would."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import orjson
import pytest
from cloudevents.core.bindings.kafka import KafkaMessage, from_kafka
from cloudevents.core.formats.json import JSONFormat

from headwater.runner.settings import Settings, Topics
from tests.aws import bucket_notifying_queue
from tests.conftest import AWS_REGION
from tests.kafkatools import read_topic, wait_caught_up
from tests.processes import HEADWATER, HeadwaterProcess
from tests.servers.services import KafkaServer, MotoServer

pytestmark = pytest.mark.integration
ROOT = Path(__file__).parent.parent.parent
PIPELINES = [str(ROOT / "examples"), str(ROOT / "tests" / "fixtures" / "pipelines")]
CSV = (ROOT / "examples" / "data" / "sales.csv").read_bytes()


class Stack:
    """One bucket with an ObjectCreated notification to one queue, bridged by one
    ``headwater dev`` process, all under one topic prefix."""

    def __init__(
        self,
        settings: Settings,
        s3: Any,
        sqs: Any,
        bucket: str,
        queue_url: str,
        process: HeadwaterProcess,
    ) -> None:
        self.settings = settings
        self.s3 = s3
        self.sqs = sqs
        self.bucket = bucket
        self.queue_url = queue_url
        self.process = process

    async def completions(self, subject_key: str, count: int = 1) -> list[Any]:
        """Wait for ``count`` completions triggered by the object ``subject_key``."""

        def mine(records: list[Any]) -> list[Any]:
            return [r for r in records if _trigger_subject(r).endswith(subject_key)]

        records = await read_topic(
            self.settings, self.settings.topics.completions, lambda rs: len(mine(rs)) >= count
        )
        return mine(records)

    async def settled(self) -> None:
        """Every event so far routed and every control message processed."""
        topics = self.settings.topics
        await wait_caught_up(self.settings, "router", topics.events)
        await wait_caught_up(self.settings, "control", topics.control)


def _trigger_subject(record: Any) -> str:
    return str(orjson.loads(record.value)["trigger"].get("subject") or "")


def _cloudevent(record: Any) -> Any:
    message = KafkaMessage(headers=dict(record.headers), key=record.key, value=record.value)
    return from_kafka(message, JSONFormat())


@pytest.fixture(scope="module")
def stack(
    kafka_server: KafkaServer, moto_server: MotoServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    unique = uuid.uuid4().hex[:10]
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": AWS_REGION,
        "AWS_ENDPOINT_URL": moto_server.endpoint_url,
    }
    session = boto3.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name=AWS_REGION
    )
    s3 = session.client("s3", endpoint_url=moto_server.endpoint_url)
    sqs = session.client("sqs", endpoint_url=moto_server.endpoint_url)
    bucket, queue = f"bucket-{unique}", f"queue-{unique}"
    queue_url = bucket_notifying_queue(s3, sqs, bucket, queue)
    settings = Settings(
        kafka=Settings.from_env({"HEADWATER_KAFKA": kafka_server.bootstrap}).kafka,
        topics=Topics(prefix=f"t{unique}."),
    )
    log = tmp_path_factory.mktemp("dev") / "headwater.log"
    process = HeadwaterProcess(
        ["dev", *PIPELINES, "--sqs", queue_url], settings, log, env=env
    ).start()
    process.wait_for_output("headwater dev:")
    try:
        yield Stack(settings, s3, sqs, bucket, queue_url, process)
    finally:
        assert process.stop() == 0, process.output()


async def test_object_put_runs_three_chained_tasks_and_completes_once(stack: Stack) -> None:
    key = "incoming/sales.csv"
    stack.s3.put_object(Bucket=stack.bucket, Key=key, Body=CSV)

    [record] = await stack.completions(key)
    event = _cloudevent(record)
    assert event.get_type() == "headwater.run.succeeded"
    assert record.key == b"csv-report"
    data = event.get_data()
    assert data["pipeline"] == "csv-report"
    assert data["trigger"]["type"] == "aws.s3.object.created"
    assert data["trigger"]["subject"] == f"s3://{stack.bucket}/{key}"
    assert [data["tasks"][t]["status"] for t in ("read", "total", "write")] == ["succeeded"] * 3
    assert data["tasks"]["total"]["output"] == {"rows": 3, "total": 18.75}
    result_key = data["tasks"]["write"]["output"]["key"]
    result = stack.s3.get_object(Bucket=stack.bucket, Key=result_key)["Body"].read()
    assert result == b"rows=3 total=18.75\n"

    await stack.settled()
    assert len(await stack.completions(key)) == 1


async def test_redelivered_s3_event_starts_no_second_run(stack: Stack) -> None:
    key = "incoming/twice.csv"
    stack.s3.put_object(Bucket=stack.bucket, Key=key, Body=CSV)
    [first] = await stack.completions(key)

    events = await read_topic(
        stack.settings,
        stack.settings.topics.events,
        lambda rs: any(_subject_header(r).endswith(key) for r in rs),
    )
    original = next(r for r in events if _subject_header(r).endswith(key))
    notification = orjson.loads(original.value)["notification"]
    stack.sqs.send_message(
        QueueUrl=stack.queue_url, MessageBody=json.dumps({"Records": [notification]})
    )

    def both_copies(records: list[Any]) -> bool:
        return sum(1 for r in records if _subject_header(r).endswith(key)) >= 2

    events = await read_topic(stack.settings, stack.settings.topics.events, both_copies)
    ids = {dict(r.headers)["ce_id"] for r in events if _subject_header(r).endswith(key)}
    assert len(ids) == 1, "the resent notification must map to the same event id"

    await stack.settled()
    completions = await stack.completions(key)
    assert [c.value for c in completions] == [first.value]


async def test_malformed_messages_go_to_dlq_and_the_stream_continues(stack: Stack) -> None:
    broken = stack.sqs.send_message(QueueUrl=stack.queue_url, MessageBody="{not json")
    missing_key = stack.sqs.send_message(
        QueueUrl=stack.queue_url,
        MessageBody=json.dumps(
            {
                "Records": [
                    {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": stack.bucket}}}
                ]
            }
        ),
    )
    key = "incoming/after-bad.csv"
    stack.s3.put_object(Bucket=stack.bucket, Key=key, Body=CSV)

    [completion] = await stack.completions(key)
    assert _cloudevent(completion).get_type() == "headwater.run.succeeded"

    wanted = {broken["MessageId"], missing_key["MessageId"]}

    def both(records: list[Any]) -> bool:
        return wanted <= {orjson.loads(r.value)["origin"].get("message_id") for r in records}

    dlq = {
        orjson.loads(r.value)["origin"]["message_id"]: orjson.loads(r.value)
        for r in await read_topic(stack.settings, stack.settings.topics.dlq, both)
    }
    assert "not valid JSON" in dlq[broken["MessageId"]]["reason"]
    assert dlq[broken["MessageId"]]["payload"] == "{not json"
    assert dlq[broken["MessageId"]]["origin"]["source"] == stack.queue_url
    assert dlq[missing_key["MessageId"]]["reason"] == (
        "S3 notification Records[0] has no s3.object.key"
    )


def _subject_header(record: Any) -> str:
    return dict(record.headers).get("ce_subject", b"").decode()


async def test_a_failing_task_is_retried_then_fails_the_run_once(stack: Stack) -> None:
    subject = f"job-{uuid.uuid4().hex[:8]}"
    publish = await asyncio.create_subprocess_exec(
        HEADWATER,
        "publish",
        "--type",
        "test.fail",
        "--subject",
        subject,
        "--data",
        '{"n": 1}',
        env=stack.process.env,
        stdout=asyncio.subprocess.PIPE,
    )
    stdout, _ = await asyncio.wait_for(publish.communicate(), 60)
    assert publish.returncode == 0
    event_id = stdout.decode().strip()

    [record] = await stack.completions(subject)
    event = _cloudevent(record)
    assert event.get_type() == "headwater.run.failed"
    data = event.get_data()
    assert data["trigger"]["id"] == event_id
    assert data["tasks"]["prepare"] == {
        **data["tasks"]["prepare"],
        "status": "succeeded",
        "output": {"ready": True},
    }
    explode = data["tasks"]["explode"]
    assert (explode["status"], explode["attempts"]) == ("failed", 3)
    assert explode["error"] == f"ValueError: cannot process {subject} (attempt 3)"
    assert data["tasks"]["never"]["status"] == "skipped"
    assert data["error"] == f"task explode failed: ValueError: cannot process {subject} (attempt 3)"
    await stack.settled()
    assert len(await stack.completions(subject)) == 1
