"""AWS SQS bridge (aiobotocore): S3 event notifications and plain JSON messages.

Long-polls ``ReceiveMessage`` in batches of up to 10; deletes with ``DeleteMessageBatch``
only the messages whose events Kafka acknowledged; gives the others back by setting
their visibility timeout to ``nack_delay`` seconds. Mapping:

- S3 notifications (also wrapped in SNS): one CloudEvent per record, ``type``
  ``aws.s3.object.created`` / ``.removed`` / ..., ``subject`` ``s3://bucket/key`` (keys are
  URL-decoded), id derived from bucket, key and the record's sequencer, so a resent
  notification makes the same event; S3's ``s3:TestEvent`` is skipped;
- a structured CloudEvent body is taken as it is;
- any other JSON object: ``type: aws.sqs.message`` with ``data: {message, attributes}``
  (the body and the message attributes), as the Pub/Sub and Service Bus bridges do;
- anything else is a ``BadMessage`` (to the DLQ, then deleted).
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_plus

import orjson
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from headwater.bridges.base import Delivery
from headwater.bridges.mapping import is_structured_cloudevent, json_body, mapper, plain_event
from headwater.runner.envelope import CloudEvent, rfc3339
from headwater.runner.errors import BadMessage, NotConnected

log = logging.getLogger(__name__)
KIND = "sqs"
_S3_TYPES = {
    "ObjectCreated": "aws.s3.object.created",
    "ObjectRemoved": "aws.s3.object.removed",
    "ObjectRestore": "aws.s3.object.restored",
    "ObjectTagging": "aws.s3.object.tagged",
}
_ID_NAMESPACE = uuid.UUID("0b3e54a4-8f0c-4f59-9f0b-3c7f6f1e2d01")


class SqsSource:
    """One SQS queue. Credentials and region come from the usual AWS chain (env, files)."""

    def __init__(
        self,
        queue_url: str,
        *,
        region: str | None = None,
        endpoint_url: str | None = None,
        wait_seconds: int = 10,
        nack_delay: int = 5,
    ) -> None:
        self.queue_url = queue_url
        self._region = region
        self._endpoint_url = endpoint_url
        self._wait_seconds = wait_seconds
        self._nack_delay = nack_delay
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: Any = None

    @property
    def name(self) -> str:
        return self.queue_url

    async def connect(self) -> None:
        stack = contextlib.AsyncExitStack()
        try:
            self._client = await stack.enter_async_context(
                get_session().create_client(
                    "sqs", region_name=self._region, endpoint_url=self._endpoint_url
                )
            )
            await self._client.get_queue_attributes(
                QueueUrl=self.queue_url, AttributeNames=["QueueArn"]
            )
        except (BotoCoreError, ClientError, OSError) as exc:
            await stack.aclose()
            raise NotConnected(f"SQS queue {self.queue_url}: {exc}") from exc
        self._stack = stack

    async def close(self) -> None:
        if self._stack is not None:
            await self._stack.aclose()
        self._stack, self._client = None, None

    async def receive(self, max_messages: int) -> list[Delivery]:
        with _connection_errors(self.queue_url):
            response = await self._client.receive_message(
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=max(1, min(10, max_messages)),
                WaitTimeSeconds=self._wait_seconds,
                MessageSystemAttributeNames=["All"],
                MessageAttributeNames=["All"],
            )
        return [self._delivery(message) for message in response.get("Messages", [])]

    def _delivery(self, message: dict[str, Any]) -> Delivery:
        system = message.get("Attributes", {})
        user = {
            name: value.get("StringValue", value.get("BinaryValue", ""))
            for name, value in message.get("MessageAttributes", {}).items()
        }
        return Delivery(
            kind=KIND,
            message_id=message["MessageId"],
            body=message.get("Body", "").encode(),
            handle=message["ReceiptHandle"],
            attributes={k: str(v) for k, v in user.items()},
            key=system.get("MessageGroupId"),
            origin=self.queue_url,
            time=_epoch_millis(system.get("SentTimestamp")),
        )

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        await self._settle(deliveries, "delete_message_batch", {})

    async def nack(self, deliveries: Sequence[Delivery]) -> None:
        await self._settle(
            deliveries, "change_message_visibility_batch", {"VisibilityTimeout": self._nack_delay}
        )

    async def _settle(
        self, deliveries: Sequence[Delivery], call: str, extra: dict[str, Any]
    ) -> None:
        for start in range(0, len(deliveries), 10):
            chunk = deliveries[start : start + 10]
            entries = [
                {"Id": str(i), "ReceiptHandle": d.handle, **extra} for i, d in enumerate(chunk)
            ]
            with _connection_errors(self.queue_url):
                response = await getattr(self._client, call)(
                    QueueUrl=self.queue_url, Entries=entries
                )
            for failure in response.get("Failed", []):
                log.warning(
                    "%s %s failed for message %s: %s",
                    self.queue_url,
                    call,
                    chunk[int(failure["Id"])].message_id,
                    failure.get("Message"),
                )


@contextlib.contextmanager
def _connection_errors(queue_url: str) -> Iterator[None]:
    """botocore's errors as ``NotConnected``: none of them leaves the bridge raw."""
    try:
        yield
    except (BotoCoreError, OSError) as exc:
        raise NotConnected(f"SQS queue {queue_url}: {exc}") from exc
    except ClientError as exc:  # refused (access, throttling, ...): reconnect with backoff
        if exc.response.get("Error", {}).get("Code") in (
            "AWS.SimpleQueueService.NonExistentQueue",
            "QueueDoesNotExist",
        ):
            raise NotConnected(f"SQS queue {queue_url} does not exist") from exc
        raise NotConnected(f"SQS queue {queue_url}: {exc}") from exc


@mapper(KIND)
def map_sqs(delivery: Delivery) -> list[CloudEvent]:
    body = json_body(delivery)
    if isinstance(body, dict) and body.get("Type") == "Notification" and "Message" in body:
        try:  # S3 -> SNS -> SQS: the notification is the SNS message
            body = orjson.loads(body["Message"])
        except (orjson.JSONDecodeError, TypeError):
            raise BadMessage("SNS notification's Message is not JSON") from None
    if isinstance(body, dict) and body.get("Event") == "s3:TestEvent":
        return []
    if isinstance(body, dict) and isinstance(body.get("Records"), list):
        return [s3_record_event(record, i) for i, record in enumerate(body["Records"])]
    if is_structured_cloudevent(body):
        return [CloudEvent.from_dict(body)]
    if not isinstance(body, dict):
        raise BadMessage(f"message body must be a JSON object, not {type(body).__name__}")
    return [plain_event(delivery, "aws.sqs.message", delivery.origin or "aws:sqs", body)]


def s3_record_event(record: Any, index: int = 0) -> CloudEvent:
    """One S3 notification record as a CloudEvent; ``BadMessage`` names a missing field."""
    where = f"Records[{index}]"
    if not isinstance(record, dict):
        raise BadMessage(f"{where} is not an object")
    event_name = _field(record, ("eventName",), where)
    bucket = _field(record, ("s3", "bucket", "name"), where)
    key = unquote_plus(_field(record, ("s3", "object", "key"), where))
    obj = record["s3"]["object"]
    family = event_name.split(":", 1)[0]
    event_type = _S3_TYPES.get(family, f"aws.s3.{family.lower()}")
    version = obj.get("sequencer") or obj.get("versionId") or obj.get("eTag") or ""
    identity = f"{event_name}\x00{bucket}\x00{key}\x00{version}\x00{record.get('eventTime', '')}"
    return CloudEvent(
        id=str(uuid.uuid5(_ID_NAMESPACE, identity)),
        source=record["s3"]["bucket"].get("arn") or f"arn:aws:s3:::{bucket}",
        type=event_type,
        subject=f"s3://{bucket}/{key}",
        time=record.get("eventTime"),
        data={
            "bucket": bucket,
            "key": key,
            "size": obj.get("size"),
            "etag": obj.get("eTag"),
            "version_id": obj.get("versionId"),
            "sequencer": obj.get("sequencer"),
            "region": record.get("awsRegion"),
            "event_name": event_name,
            "notification": record,
        },
    )


def _field(record: dict[str, Any], path: tuple[str, ...], where: str) -> str:
    value: Any = record
    for part in path:
        if not isinstance(value, dict) or part not in value:
            raise BadMessage(f"S3 notification {where} has no {'.'.join(path)}")
        value = value[part]
    if not isinstance(value, str) or not value:
        raise BadMessage(f"S3 notification {where}.{'.'.join(path)} must be a non-empty string")
    return value


def _epoch_millis(value: str | None) -> str | None:
    if not value:
        return None
    return rfc3339(datetime.fromtimestamp(int(value) / 1000, UTC))
