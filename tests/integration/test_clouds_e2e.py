"""End to end per cloud: a GCS-finalize notification on Pub/Sub, a BlobCreated event on
Service Bus (Event Grid and CloudEvents schema) and an HTTP POST each trigger a pipeline
and produce exactly one completion event."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from azure.servicebus import ServiceBusMessage
from azure.servicebus.aio import ServiceBusClient
from google.cloud import pubsub_v1

from headwater.runner.settings import Settings
from tests.conformance.local_sources import free_port
from tests.kafkatools import read_topic, wait_caught_up
from tests.processes import HeadwaterProcess
from tests.servers.services import PubSubServer, ServiceBusServer

pytestmark = pytest.mark.integration
PIPELINES = Path(__file__).parent.parent / "fixtures" / "pipelines"


class Clouds:
    def __init__(
        self,
        settings: Settings,
        tag: str,
        process: HeadwaterProcess,
        topic: str,
        queue: str,
        webhook: str,
        publisher: Any,
        connection: str,
    ) -> None:
        self.settings, self.tag, self.process = settings, tag, process
        self.topic, self.queue, self.webhook = topic, queue, webhook
        self.publisher, self.connection = publisher, connection

    async def completion_for(self, subject: str) -> dict[str, Any]:
        """The one completion triggered by ``subject`` (checked again once all settled)."""

        def mine(records: list[Any]) -> list[Any]:
            return [
                orjson.loads(r.value)
                for r in records
                if orjson.loads(r.value)["trigger"]["subject"] == subject
            ]

        topic = self.settings.topics.completions
        await read_topic(self.settings, topic, lambda rs: bool(mine(rs)))
        await wait_caught_up(self.settings, "router", self.settings.topics.events)
        await wait_caught_up(self.settings, "control", self.settings.topics.control)
        [completion] = mine(await read_topic(self.settings, topic, lambda rs: bool(mine(rs))))
        assert completion["status"] == "succeeded", completion
        return dict(completion["tasks"]["describe"]["output"])


@pytest.fixture(scope="module")
def clouds(
    kafka_server: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Clouds]:
    tag = uuid.uuid4().hex[:10]
    pubsub, servicebus = PubSubServer(), ServiceBusServer()
    os.environ["PUBSUB_EMULATOR_HOST"] = pubsub.emulator_host
    publisher = pubsub_v1.PublisherClient()
    subscriber = pubsub_v1.SubscriberClient()
    topic = publisher.topic_path("e2e", f"gcs-{tag}")
    subscription = subscriber.subscription_path("e2e", f"headwater-{tag}")
    publisher.create_topic(name=topic)
    subscriber.create_subscription(request={"name": subscription, "topic": topic})
    port = free_port()
    queue = f"blobs-{tag}/subscriptions/headwater"  # a topic subscription; the queue case is
    # covered by the conformance suite
    settings = Settings(
        kafka=Settings.from_env({"HEADWATER_KAFKA": kafka_server.bootstrap}).kafka,
        topics=Settings.from_env({"HEADWATER_TOPIC_PREFIX": f"t{tag}."}).topics,
    )
    process = HeadwaterProcess(
        [
            "dev",
            str(PIPELINES),
            "--pubsub",
            subscription,
            "--servicebus",
            queue,
            "--servicebus-connection",
            "${env:E2E_SERVICEBUS}",
            "--webhook",
            f"127.0.0.1:{port}",
        ],
        settings,
        tmp_path_factory.mktemp("clouds") / "headwater.log",
        env={
            "PUBSUB_EMULATOR_HOST": pubsub.emulator_host,
            "E2E_SERVICEBUS": servicebus.connection_string,
        },
    ).start()
    process.wait_for_output(f"servicebus:{queue}: connected")  # subscribed: sends fan out
    try:
        yield Clouds(
            settings,
            tag,
            process,
            topic,
            queue,
            f"http://127.0.0.1:{port}/events",
            publisher,
            servicebus.connection_string,
        )
    finally:
        assert process.stop() == 0, process.output()


async def test_a_gcs_finalize_notification_on_pubsub_runs_the_pipeline(clouds: Clouds) -> None:
    name = f"reports/{clouds.tag}.csv"
    resource = {
        "kind": "storage#object",
        "name": name,
        "bucket": "acme-data",
        "size": "1234",
        "generation": "1732530000000000",
        "contentType": "text/csv",
        "timeCreated": "2026-11-25T10:00:00.000Z",
        "updated": "2026-11-25T10:00:00.000Z",
    }
    clouds.publisher.publish(
        clouds.topic,
        orjson.dumps(resource),
        eventType="OBJECT_FINALIZE",
        bucketId="acme-data",
        objectId=name,
        objectGeneration="1732530000000000",
        payloadFormat="JSON_API_V1",
        eventTime="2026-11-25T10:00:00.000Z",
    ).result(timeout=30)

    output = await clouds.completion_for(f"gs://acme-data/{name}")
    assert output == {
        "type": "google.cloud.storage.object.finalized",
        "subject": f"gs://acme-data/{name}",
        "size": 1234,
        "name": name,
    }


@pytest.mark.parametrize("schema", ["eventgrid", "cloudevents"])
async def test_a_blob_created_event_on_servicebus_runs_the_pipeline(
    clouds: Clouds, schema: str
) -> None:
    url = f"https://acme.blob.core.windows.net/reports/{clouds.tag}-{schema}.csv"
    data = {
        "api": "PutBlob",
        "contentType": "text/csv",
        "contentLength": 2048,
        "eTag": "0x8DCF0000000001",
        "blobType": "BlockBlob",
        "url": url,
    }
    account = "/subscriptions/s/resourceGroups/g/providers/Microsoft.Storage/storageAccounts/acme"
    subject = f"/blobServices/default/containers/reports/blobs/{clouds.tag}-{schema}.csv"
    if schema == "eventgrid":
        body: Any = [
            {
                "topic": account,
                "subject": subject,
                "eventType": "Microsoft.Storage.BlobCreated",
                "id": str(uuid.uuid4()),
                "data": data,
                "dataVersion": "",
                "metadataVersion": "1",
                "eventTime": "2026-11-25T10:00:00Z",
            }
        ]
    else:
        body = {
            "specversion": "1.0",
            "type": "Microsoft.Storage.BlobCreated",
            "source": account,
            "id": str(uuid.uuid4()),
            "subject": subject,
            "time": "2026-11-25T10:00:00Z",
            "data": data,
        }
    async with (
        ServiceBusClient.from_connection_string(clouds.connection) as client,
        client.get_topic_sender(clouds.queue.split("/")[0]) as sender,
    ):
        await sender.send_messages(ServiceBusMessage(orjson.dumps(body)))

    output = await clouds.completion_for(url)
    assert output == {
        "type": "azure.storage.blob.created",
        "subject": url,
        "size": 2048,
        "name": None,
    }


async def test_an_http_post_runs_the_pipeline(clouds: Clouds) -> None:
    key = f"post-{clouds.tag}"
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            clouds.webhook, json={"kind": "report", "name": key}, headers={"Idempotency-Key": key}
        ) as response,
    ):
        assert response.status == 202, await response.text()
        event_id = (await response.json())["id"]
    assert event_id == key

    def mine(records: list[Any]) -> list[Any]:
        return [
            orjson.loads(r.value) for r in records if orjson.loads(r.value)["trigger"]["id"] == key
        ]

    topic = clouds.settings.topics.completions
    [completion] = mine(await read_topic(clouds.settings, topic, lambda rs: bool(mine(rs))))
    assert completion["trigger"]["type"] == "headwater.webhook.received"
    assert completion["tasks"]["describe"]["output"]["name"] == key
