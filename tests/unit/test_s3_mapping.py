"""S3 notification (as delivered by SQS) -> CloudEvents."""

from __future__ import annotations

import json
from typing import Any

import pytest

from headwater.bridges.base import Delivery
from headwater.bridges.mapping import to_cloudevents
from headwater.bridges.sqs import KIND
from headwater.runner.errors import BadMessage


def s3_record(
    key: str = "in%2Fmy+report%282%29.csv", name: str = "ObjectCreated:Put"
) -> dict[str, Any]:
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": "eu-west-1",
        "eventTime": "2026-11-25T10:00:00.000Z",
        "eventName": name,
        "s3": {
            "bucket": {"name": "incoming", "arn": "arn:aws:s3:::incoming"},
            "object": {"key": key, "size": 42, "eTag": "abc123", "sequencer": "0055AED6DCD9028"},
        },
    }


def delivery(body: Any, message_id: str = "m-1") -> Delivery:
    text = body if isinstance(body, str) else json.dumps(body)
    return Delivery(
        kind=KIND,
        message_id=message_id,
        body=text.encode(),
        origin="http://sqs/queue/q",
        attributes={"kind": "order"},
        time="2026-11-25T10:00:00.000Z",
    )


def test_object_created_maps_to_a_cloudevent_with_a_decoded_key() -> None:
    [event] = to_cloudevents(delivery({"Records": [s3_record()]}))
    assert event.type == "aws.s3.object.created"
    assert event.subject == "s3://incoming/in/my report(2).csv"
    assert event.source == "arn:aws:s3:::incoming"
    assert event.time == "2026-11-25T10:00:00.000Z"
    assert event.data["size"] == 42 and event.data["etag"] == "abc123"
    assert event.data["key"] == "in/my report(2).csv"
    assert event.data["notification"] == s3_record()
    assert event.extensions == {"hwbridge": "sqs", "hwmsgid": "m-1"}


def test_the_same_record_sent_again_maps_to_the_same_event_id() -> None:
    [first] = to_cloudevents(delivery({"Records": [s3_record()]}, "m-1"))
    [again] = to_cloudevents(delivery({"Records": [s3_record()]}, "m-2"))
    [other] = to_cloudevents(delivery({"Records": [s3_record(key="other.csv")]}))
    assert first.id == again.id != other.id


def test_one_event_per_record_and_removed_objects() -> None:
    events = to_cloudevents(
        delivery({"Records": [s3_record(), s3_record(name="ObjectRemoved:Delete")]})
    )
    assert [e.type for e in events] == ["aws.s3.object.created", "aws.s3.object.removed"]


def test_the_s3_test_event_is_skipped() -> None:
    body = {"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "incoming"}
    assert to_cloudevents(delivery(body)) == []


def test_sns_wrapped_notifications_are_unwrapped() -> None:
    body = {"Type": "Notification", "Message": json.dumps({"Records": [s3_record()]})}
    assert [e.type for e in to_cloudevents(delivery(body))] == ["aws.s3.object.created"]


def test_plain_json_and_structured_cloudevents() -> None:
    [plain] = to_cloudevents(delivery({"order": 7}))
    assert (plain.type, plain.id) == ("aws.sqs.message", "m-1")
    assert plain.data == {"message": {"order": 7}, "attributes": {"kind": "order"}}
    assert plain.source == "http://sqs/queue/q" and plain.time == "2026-11-25T10:00:00.000Z"
    structured = {
        "specversion": "1.0",
        "id": "x",
        "source": "/shop",
        "type": "order.placed",
        "data": {"n": 1},
    }
    [event] = to_cloudevents(delivery(structured))
    assert (event.id, event.type, event.data) == ("x", "order.placed", {"n": 1})


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("{oops", "message body is not valid JSON"),
        ([1, 2], "message body must be a JSON object, not list"),
        (
            {"Records": [{"eventName": "ObjectCreated:Put"}]},
            "S3 notification Records[0] has no s3.bucket.name",
        ),
        (
            {"Records": [s3_record(key="")]},
            "S3 notification Records[0].s3.object.key must be a non-empty string",
        ),
        (
            {"specversion": "1.0", "id": "x"},
            "CloudEvent is missing required attribute(s): source, type",
        ),
    ],
)
def test_malformed_messages_say_what_is_wrong(body: Any, reason: str) -> None:
    with pytest.raises(BadMessage) as caught:
        to_cloudevents(delivery(body))
    assert str(caught.value).startswith(reason)
