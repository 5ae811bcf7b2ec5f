"""Native messages of Pub/Sub, Service Bus, the webhook and the drop folder -> CloudEvents."""

from __future__ import annotations

import json
from typing import Any

import pytest

from headwater.bridges import filedrop, pubsub, servicebus, webhook
from headwater.bridges.base import Delivery
from headwater.bridges.mapping import to_cloudevents
from headwater.runner.errors import BadMessage

GCS_ATTRIBUTES = {
    "eventType": "OBJECT_FINALIZE",
    "bucketId": "acme",
    "objectId": "in/a b.csv",
    "objectGeneration": "17",
    "payloadFormat": "JSON_API_V1",
}
BLOB = {
    "api": "PutBlob",
    "contentLength": 9,
    "eTag": "0x1",
    "url": "https://acct.blob.core.windows.net/in/a.csv",
}


def delivery(
    kind: str, body: Any, attributes: dict[str, str] | None = None, message_id: str = "m-1"
) -> Delivery:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Delivery(
        kind=kind,
        message_id=message_id,
        body=raw,
        attributes=attributes or {},
        origin="origin",
        time="2026-11-25T10:00:00.000Z",
    )


def test_gcs_finalize_on_pubsub() -> None:
    resource = {"name": "in/a b.csv", "bucket": "acme", "size": "42", "generation": "17"}
    [event] = to_cloudevents(delivery(pubsub.KIND, resource, GCS_ATTRIBUTES))
    assert (event.type, event.subject) == (
        "google.cloud.storage.object.finalized",
        "gs://acme/in/a b.csv",
    )
    assert event.source == "//storage.googleapis.com/projects/_/buckets/acme"
    assert event.data["size"] == 42 and event.data["generation"] == "17"
    [again] = to_cloudevents(delivery(pubsub.KIND, resource, GCS_ATTRIBUTES, message_id="m-2"))
    assert again.id == event.id, "a re-sent notification is the same event"


def test_plain_and_binary_mode_pubsub_messages() -> None:
    [plain] = to_cloudevents(delivery(pubsub.KIND, {"n": 1}, {"kind": "x"}))
    assert plain.type == "google.pubsub.message.published"
    assert plain.data == {"message": {"n": 1}, "attributes": {"kind": "x"}}
    binary = {"ce-specversion": "1.0", "ce-id": "e", "ce-source": "/s", "ce-type": "t"}
    [event] = to_cloudevents(delivery(pubsub.KIND, {"n": 1}, binary))
    assert (event.id, event.type, event.data) == ("e", "t", {"n": 1})


@pytest.mark.parametrize("schema", ["eventgrid", "cloudevents"])
def test_blob_created_on_servicebus(schema: str) -> None:
    body: Any
    if schema == "eventgrid":
        body = [
            {
                "eventType": "Microsoft.Storage.BlobCreated",
                "id": "g-1",
                "data": BLOB,
                "subject": "/blobServices/default/containers/in/blobs/a.csv",
                "topic": "/acct",
            }
        ]
    else:
        body = {
            "specversion": "1.0",
            "type": "Microsoft.Storage.BlobCreated",
            "id": "g-1",
            "source": "/acct",
            "data": BLOB,
        }
    [event] = to_cloudevents(delivery(servicebus.KIND, body))
    assert (event.type, event.subject, event.id) == (
        "azure.storage.blob.created",
        BLOB["url"],
        "g-1",
    )
    assert event.data["size"] == 9


def test_servicebus_plain_message_and_bad_blob_event() -> None:
    [plain] = to_cloudevents(delivery(servicebus.KIND, {"n": 1}, {"p": "v"}))
    assert plain.data == {"message": {"n": 1}, "attributes": {"p": "v"}}
    with pytest.raises(BadMessage, match=r"BlobCreated event\[0\] has no data.url"):
        to_cloudevents(delivery(servicebus.KIND, [{"eventType": "Microsoft.Storage.BlobCreated"}]))


def test_webhook_modes() -> None:
    [plain] = to_cloudevents(delivery(webhook.KIND, {"n": 1}, {"content-type": "application/json"}))
    assert (plain.type, plain.id, plain.data) == ("headwater.webhook.received", "m-1", {"n": 1})
    structured = {"specversion": "1.0", "id": "s", "source": "/x", "type": "t", "data": 1}
    [event] = to_cloudevents(
        delivery(webhook.KIND, structured, {"content-type": "application/cloudevents+json"})
    )
    assert (event.id, event.data) == ("s", 1)
    with pytest.raises(BadMessage, match="missing required attribute"):
        to_cloudevents(delivery(webhook.KIND, {}, {"ce-specversion": "1.0", "ce-id": "x"}))


def test_drop_folder_file() -> None:
    body = {
        "dropped_path": "/in/a.csv",
        "path": "/in/processed/a.csv",
        "size": 3,
        "mtime_ns": 1_795_600_000_000_000_000,
    }
    [event] = to_cloudevents(delivery(filedrop.KIND, body))
    assert (event.type, event.subject) == ("headwater.file.created", "file:///in/a.csv")
    assert event.data == {
        "path": "/in/processed/a.csv",
        "dropped_path": "/in/a.csv",
        "name": "a.csv",
        "size": 3,
    }
