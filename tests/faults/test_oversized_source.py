"""A source message whose event is too large for a Kafka record (Pub/Sub takes 10 MB)
goes to the DLQ with its size and source message id, and is acked; the messages pulled
with it flow (the whole pull used to be nacked and redelivered, forever)."""

from __future__ import annotations

import os
import uuid
from typing import Any

import orjson
import pytest
from google.cloud import pubsub_v1

from headwater.runner.settings import Settings
from tests.conftest import Start
from tests.kafkatools import pipeline_file, read_topic
from tests.servers.services import PubSubServer

pytestmark = pytest.mark.integration

FILES = {
    "published.yaml": pipeline_file(
        "published", "google.pubsub.message.published", {"note": '{python: "published_tasks:note"}'}
    ),
    "published_tasks.py": "def note(ctx):\n    return {'n': ctx.event['data']['message']['n']}\n",
}


async def test_an_oversized_pubsub_message_is_dead_lettered_and_its_batch_flows(
    settings: Settings, headwater_dev: Start
) -> None:
    server = PubSubServer()
    server.start()
    os.environ["PUBSUB_EMULATOR_HOST"] = server.emulator_host
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    tag = uuid.uuid4().hex[:8]
    topic = publisher.topic_path("faults", f"topic-{tag}")
    subscription = subscriber.subscription_path("faults", f"sub-{tag}")
    publisher.create_topic(name=topic)
    subscriber.create_subscription(request={"name": subscription, "topic": topic})
    futures = [publisher.publish(topic, orjson.dumps({"n": n})) for n in range(10)]
    huge = publisher.publish(topic, orjson.dumps({"n": -1, "blob": "x" * 3_000_000}))
    futures += [publisher.publish(topic, orjson.dumps({"n": n})) for n in range(10, 20)]
    huge_id = huge.result(timeout=30)
    for future in futures:
        future.result(timeout=30)
    runner = headwater_dev(
        FILES, env={"PUBSUB_EMULATOR_HOST": server.emulator_host}, args=("--pubsub", subscription)
    )

    def outputs(records: list[Any]) -> set[int]:
        return {orjson.loads(r.value)["tasks"]["note"]["output"]["n"] for r in records}

    await read_topic(settings, settings.topics.completions, lambda rs: len(outputs(rs)) >= 20)
    dlq = await read_topic(settings, settings.topics.dlq, lambda rs: len(rs) >= 1)
    [entry] = [orjson.loads(r.value) for r in dlq]
    assert "too large" in entry["reason"] and entry["origin"]["message_id"] == huge_id
    assert entry["payload_truncated"] is True and entry["payload_size"] > 3_000_000
    assert runner.process is not None and runner.process.poll() is None
