"""Harnesses of the Google and Azure sources, against pstest and the AMQP test server."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import orjson
from azure.servicebus import ServiceBusMessage, ServiceBusSubQueue
from azure.servicebus.aio import ServiceBusClient
from google.cloud import pubsub_v1

from headwater.runner.settings import Settings
from tests.conformance.harness import Message, SourceHarness
from tests.kafkatools import read_topic
from tests.servers.services import PubSubServer, ServiceBusServer

PROJECT = "conformance"
CONNECTION_VARIABLE = "HW_CONFORMANCE_SERVICEBUS"


class PubSubHarness(SourceHarness):
    kind = "pubsub"

    async def setup(self) -> None:
        self.server = PubSubServer()
        os.environ["PUBSUB_EMULATOR_HOST"] = self.server.emulator_host  # read by the clients
        options = pubsub_v1.types.PublisherOptions(enable_message_ordering=self.ordered)
        self.publisher = pubsub_v1.PublisherClient(publisher_options=options)
        self.subscriber = pubsub_v1.SubscriberClient()
        self.topic = self.publisher.topic_path(PROJECT, f"topic-{self.tag}")
        self.subscription = self.subscriber.subscription_path(PROJECT, f"sub-{self.tag}")
        self.publisher.create_topic(name=self.topic)
        self.subscriber.create_subscription(
            request={
                "name": self.subscription,
                "topic": self.topic,
                "ack_deadline_seconds": 10,
                "enable_message_ordering": self.ordered,
            }
        )

    def dev_args(self) -> list[str]:
        return ["--pubsub", self.subscription]

    def dev_env(self) -> dict[str, str]:
        return {"PUBSUB_EMULATOR_HOST": self.server.emulator_host}

    async def publish(self, messages: Sequence[Message]) -> None:
        futures = [
            self.publisher.publish(
                self.topic, orjson.dumps(self.body(seq)), ordering_key=key or "", seq=str(seq)
            )
            for seq, key in messages
        ]
        for future in futures:
            future.result(timeout=30)

    async def publish_malformed(self) -> Any:
        """A GCS notification whose object resource is not JSON."""
        future = self.publisher.publish(
            self.topic,
            b"not json",
            eventType="OBJECT_FINALIZE",
            bucketId="b",
            objectId="o",
            payloadFormat="JSON_API_V1",
        )
        return future.result(timeout=30)

    async def check_malformed(self, handle: Any, settings: Settings) -> None:
        await _dlq_entry(
            settings,
            handle,
            "GCS notification body is not a JSON object resource",
            {"bridge": "pubsub", "source": self.subscription, "message_id": handle},
        )

    async def remaining(self) -> set[int]:
        seqs: set[int] = set()
        # Messages the bridge held come back once its 15 s ack deadline passes.
        not_before = time.monotonic() + 18
        quiet_until = not_before
        while time.monotonic() < quiet_until:
            response = self.subscriber.pull(
                subscription=self.subscription, max_messages=100, timeout=5
            )
            if response.received_messages:
                for received in response.received_messages:
                    body = orjson.loads(received.message.data)
                    seqs.add(body["seq"])
                self.subscriber.acknowledge(
                    subscription=self.subscription,
                    ack_ids=[r.ack_id for r in response.received_messages],
                )
                quiet_until = max(not_before, time.monotonic() + 3)
        return seqs


class ServiceBusHarness(SourceHarness):
    kind = "servicebus"

    async def setup(self) -> None:
        self.server = ServiceBusServer()
        self.queue = f"conformance-{self.tag}"  # the test server creates entities on first use

    def dev_args(self) -> list[str]:
        return [
            "--servicebus",
            self.queue,
            "--servicebus-connection",
            f"${{env:{CONNECTION_VARIABLE}}}",
        ]

    def dev_env(self) -> dict[str, str]:
        return {CONNECTION_VARIABLE: self.server.connection_string}

    def _client(self) -> ServiceBusClient:
        return ServiceBusClient.from_connection_string(self.server.connection_string)

    async def publish(self, messages: Sequence[Message]) -> None:
        async with self._client() as client, client.get_queue_sender(self.queue) as sender:
            for seq, key in messages:  # one by one: the order is part of what is tested
                await sender.send_messages(
                    ServiceBusMessage(
                        orjson.dumps(self.body(seq)),
                        message_id=f"{self.tag}-{seq}",
                        partition_key=key,
                        content_type="application/json",
                    )
                )

    async def publish_malformed(self) -> Any:
        async with self._client() as client, client.get_queue_sender(self.queue) as sender:
            await sender.send_messages(ServiceBusMessage(b"{oops", message_id=f"{self.tag}-bad"))
        return f"{self.tag}-bad"

    async def check_malformed(self, handle: Any, settings: Settings) -> None:
        async with (
            self._client() as client,
            client.get_queue_receiver(
                self.queue, sub_queue=ServiceBusSubQueue.DEAD_LETTER, max_wait_time=10
            ) as receiver,
        ):
            [message] = await receiver.receive_messages(max_message_count=1, max_wait_time=10)
            assert message.message_id == handle
            assert message.dead_letter_reason == "MalformedMessage"
            assert (message.dead_letter_error_description or "").startswith(
                "message body is not valid JSON"
            )
            await receiver.complete_message(message)

    async def remaining(self) -> set[int]:
        """Receive until nothing is left, locked ones included (locks lapse in 5 s)."""
        seqs: set[int] = set()
        deadline = time.monotonic() + 30
        async with self._client() as client, client.get_queue_receiver(self.queue) as receiver:
            while time.monotonic() < deadline:
                for message in await receiver.receive_messages(
                    max_message_count=50, max_wait_time=1
                ):
                    seqs.add(orjson.loads(b"".join(message.body))["seq"])
                    await receiver.complete_message(message)
                if not await receiver.peek_messages(max_message_count=1):
                    return seqs
        raise AssertionError(f"queue {self.queue} did not drain")


async def _dlq_entry(
    settings: Settings, message_id: str, reason: str, origin: dict[str, str]
) -> None:
    def entry(records: list[Any]) -> list[dict[str, Any]]:
        values = [orjson.loads(r.value) for r in records]
        return [v for v in values if v["origin"].get("message_id") == message_id]

    [found] = entry(await read_topic(settings, settings.topics.dlq, lambda rs: bool(entry(rs))))
    assert found["reason"].startswith(reason), found
    assert found["origin"] == origin
