"""The envelope: Kafka binary mode both ways, the official SDK and the published schema agree."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import jsonschema
import pytest
from cloudevents.core.bindings.kafka import KafkaMessage
from cloudevents.core.bindings.kafka import from_kafka as sdk_from_kafka
from cloudevents.core.formats.json import JSONFormat

from headwater.runner.envelope import (
    CloudEvent,
    epoch_iso,
    from_binary,
    from_kafka,
    rfc3339,
    to_kafka,
)
from headwater.runner.errors import BadMessage
from headwater.runner.runs.completion import completion_event
from headwater.runner.runs.machine import Run, TaskRecord

SCHEMA = json.loads((resources.files("headwater.schemas") / "cloudevent.schema.json").read_text())
EVENT = CloudEvent(
    id="e-1",
    source="arn:aws:s3:::in",
    type="aws.s3.object.created",
    subject="s3://in/a.csv",
    time="2026-11-25T10:00:00.000Z",
    data={"size": 3, "tags": ["x"]},
    extensions={"hwbridge": "sqs", "hwmsgid": "m-1"},
)


def test_binary_mode_round_trips() -> None:
    headers, value = to_kafka(EVENT)
    assert ("ce_type", b"aws.s3.object.created") in headers
    assert ("content-type", b"application/json") in headers
    assert from_kafka(headers, value) == EVENT


def test_the_official_sdk_reads_what_headwater_writes() -> None:
    headers, value = to_kafka(EVENT)
    event = sdk_from_kafka(KafkaMessage(headers=dict(headers), key=None, value=value), JSONFormat())
    assert (event.get_id(), event.get_type(), event.get_subject()) == (
        "e-1",
        "aws.s3.object.created",
        "s3://in/a.csv",
    )
    assert event.get_data() == {"size": 3, "tags": ["x"]}
    assert event.get_extension("hwmsgid") == "m-1"


def test_structured_mode_is_read_too() -> None:
    assert from_kafka([], json.dumps(EVENT.to_dict()).encode()) == EVENT


def completed_run() -> Run:
    return Run(
        "r-1",
        "p",
        {"id": "e-1", "source": "s", "type": "t"},
        100.0,
        "failed",
        101.5,
        {"a": TaskRecord("failed", 2, None, "ValueError: x", 100.1, 101.4)},
    )


@pytest.mark.parametrize("event", [EVENT, completion_event(completed_run())])
def test_events_validate_against_the_published_schema(event: CloudEvent) -> None:
    jsonschema.validate(event.to_dict(), SCHEMA)


def test_completion_event_names_the_failed_task() -> None:
    event = completion_event(completed_run())
    assert (event.id, event.type, event.source) == (
        "r-1",
        "headwater.run.failed",
        "/headwater/pipelines/p",
    )
    assert event.data["error"] == "task a failed: ValueError: x"
    assert event.data["tasks"]["a"]["duration_ms"] == 1300.0
    assert event.data["duration_ms"] == 1500.0


@pytest.mark.parametrize(
    ("headers", "value", "reason"),
    [
        (
            [("ce_id", b"1"), ("ce_source", b"s"), ("ce_specversion", b"1.0")],
            b"{}",
            "CloudEvent is missing required attribute(s): type",
        ),
        (
            [
                ("ce_id", b"1"),
                ("ce_source", b"s"),
                ("ce_type", b"t"),
                ("ce_specversion", b"1.0"),
                ("content-type", b"application/json"),
            ],
            b"{nope",
            "event data is not valid JSON",
        ),
        ([], b"[1]", "a CloudEvent must be a JSON object, not list"),
        ([], b"", "structured CloudEvent is empty"),
        (
            [("ce_id", b"1"), ("ce_source", b"s"), ("ce_type", b"t"), ("ce_specversion", b"0.3")],
            b"",
            "unsupported CloudEvents specversion '0.3'",
        ),
    ],
)
def test_records_that_are_not_cloudevents_say_why(
    headers: list[tuple[str, bytes]], value: bytes, reason: str
) -> None:
    with pytest.raises(BadMessage) as caught:
        from_kafka(headers, value)
    assert str(caught.value).startswith(reason)


def _unused(_: Any) -> None: ...


def test_epoch_iso_agrees_with_rfc3339() -> None:
    for seconds in (0.0, 1732530000.1234, 1764064800.9999, 1764064800.0005):
        expected = rfc3339(datetime.fromtimestamp(seconds, UTC))
        assert epoch_iso(seconds) == expected, seconds


@pytest.mark.parametrize("prefix", ["ce-", "ce_"])
def test_from_binary_reads_either_prefix_as_from_kafka_does(prefix: str) -> None:
    headers, value = to_kafka(EVENT)
    attributes = {
        (prefix + name[3:] if name.startswith("ce_") else name): raw.decode()
        for name, raw in headers
    }
    assert from_binary(attributes, value, prefix) == EVENT == from_kafka(headers, value)


@pytest.mark.parametrize("prefix", ["ce-", "ce_"])
def test_from_binary_prefix_case_content_type_and_other_attributes(prefix: str) -> None:
    attributes = {
        f"{prefix}specversion": "1.0",
        f"{prefix.upper()}ID": "e",
        f"{prefix}source": "/s",
        f"{prefix}type": "t",
        "Content-Type": "text/plain",
        "traceparent": "00-ab-cd-01",
    }
    event = from_binary(attributes, b"hello", prefix)
    assert (event.id, event.data, event.datacontenttype, event.extensions) == (
        "e",
        "hello",
        "text/plain",
        {},
    )
    other = "ce_" if prefix == "ce-" else "ce-"
    with pytest.raises(BadMessage, match="missing required attribute"):
        from_binary(attributes, b"hello", other)


def test_from_binary_says_why_data_is_bad() -> None:
    attributes = {"ce-specversion": "1.0", "ce-id": "e", "ce-source": "/s", "ce-type": "t"}
    with pytest.raises(BadMessage, match=r"^event data is not valid JSON"):
        from_binary(attributes, b"{nope", "ce-")
    assert from_binary(attributes, b"", "ce-").data is None
