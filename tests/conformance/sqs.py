"""The SQS harness (moto): a standard queue, or a FIFO queue for the ordering test."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import boto3
import orjson

from headwater.runner.settings import Settings
from tests.conformance.harness import Message, SourceHarness
from tests.kafkatools import read_topic
from tests.servers.services import MotoServer

REGION = "us-east-1"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": REGION,
}


class SqsHarness(SourceHarness):
    kind = "sqs"

    async def setup(self) -> None:
        self.server = MotoServer()
        self.sqs = boto3.client(
            "sqs",
            region_name=REGION,
            endpoint_url=self.server.endpoint_url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        name = f"conformance-{self.tag}" + (".fifo" if self.ordered else "")
        attributes = {"VisibilityTimeout": "5"}
        if self.ordered:
            attributes["FifoQueue"] = "true"
        self.queue_url = self.sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]

    def dev_args(self) -> list[str]:
        return ["--sqs", self.queue_url]

    def dev_env(self) -> dict[str, str]:
        return {**CREDENTIALS, "AWS_ENDPOINT_URL": self.server.endpoint_url}

    async def publish(self, messages: Sequence[Message]) -> None:
        for start in range(0, len(messages), 10):
            entries = []
            for seq, key in messages[start : start + 10]:
                entry: dict[str, Any] = {
                    "Id": str(seq),
                    "MessageBody": orjson.dumps(self.body(seq)).decode(),
                }
                if self.ordered:
                    entry["MessageGroupId"] = key or "default"
                    entry["MessageDeduplicationId"] = f"{self.tag}-{seq}"
                entries.append(entry)
            response = self.sqs.send_message_batch(QueueUrl=self.queue_url, Entries=entries)
            assert not response.get("Failed"), response

    async def publish_malformed(self) -> Any:
        return self.sqs.send_message(QueueUrl=self.queue_url, MessageBody="{oops")["MessageId"]

    async def check_malformed(self, handle: Any, settings: Settings) -> None:
        def found(records: list[Any]) -> bool:
            return any(orjson.loads(r.value)["origin"].get("message_id") == handle for r in records)

        records = await read_topic(settings, settings.topics.dlq, found)
        [entry] = [
            orjson.loads(r.value)
            for r in records
            if orjson.loads(r.value)["origin"].get("message_id") == handle
        ]
        assert entry["reason"].startswith("message body is not valid JSON")
        assert entry["origin"] == {"bridge": "sqs", "source": self.queue_url, "message_id": handle}
        assert entry["payload"] == "{oops"

    async def remaining(self) -> set[int]:
        """Receive until the queue holds nothing, visible or in flight."""
        seqs: set[int] = set()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            response = self.sqs.receive_message(
                QueueUrl=self.queue_url, WaitTimeSeconds=1, MaxNumberOfMessages=10
            )
            for message in response.get("Messages", []):
                body = orjson.loads(message["Body"])
                if isinstance(body, dict) and body.get("tag") == self.tag:
                    seqs.add(body["seq"])
                self.sqs.delete_message(
                    QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"]
                )
            counts = self.sqs.get_queue_attributes(
                QueueUrl=self.queue_url,
                AttributeNames=[
                    "ApproximateNumberOfMessages",
                    "ApproximateNumberOfMessagesNotVisible",
                ],
            )
            if not any(int(v) for v in counts["Attributes"].values()):
                return seqs
        raise AssertionError(f"queue {self.queue_url} did not drain")
