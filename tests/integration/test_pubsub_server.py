"""The Pub/Sub test server (Google's pstest, ``tests/servers/pubsub``) against the official
Python clients: what a Pub/Sub bridge can rely on when it runs against it.

Facts pinned here (pstest v2.8.1):
- Streaming pull (high-level ``SubscriberClient.subscribe`` and the async GAPIC
  ``streaming_pull``), ack, nack (modack 0) → redelivery with a new ack id, dead-letter
  policy with ``delivery_attempt``, ordering keys.
- Ordering is enforced by the server: at most one outstanding message per ordering key, so
  a unary pull returns one message per key.  (Real Pub/Sub returns several, in order.)
- Without ordering, delivery order is random (pstest walks a Go map).
- Streaming pull sends one message per stream per 10 ms tick (≈ 90 msgs/s per stream,
  linear in the number of streams); unary pull returns everything available at once.
- No server-side flow control (``max_outstanding_messages`` is ignored).
- The state lives in memory: a restart loses every topic and subscription, and message ids
  start again from ``m0``: never dedup on message ids across a server restart.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import pytest
from google.api_core.exceptions import NotFound
from google.cloud import pubsub_v1
from google.cloud.pubsub_v1.subscriber.message import Message
from google.cloud.pubsub_v1.types import FlowControl, PublisherOptions
from google.pubsub_v1 import (
    DeadLetterPolicy,
    PublisherAsyncClient,
    PubsubMessage,
    StreamingPullRequest,
    StreamingPullResponse,
    SubscriberAsyncClient,
)
from google.pubsub_v1.services.publisher.transports import PublisherGrpcAsyncIOTransport
from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcAsyncIOTransport

from tests.servers.services import PubSubServer

pytestmark = pytest.mark.integration
WAIT = 30.0  # deadline for anything we wait for


@pytest.fixture(scope="module")
def pubsub_server() -> PubSubServer:
    server = PubSubServer()
    server.start()
    return server


@pytest.fixture
def emulator(pubsub_server: PubSubServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """``PUBSUB_EMULATOR_HOST`` for the clients made by this test."""
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_server.emulator_host)
    return pubsub_server.emulator_host


@pytest.fixture
def project(unique: str) -> str:
    return f"projects/hw-{unique}"


@pytest.fixture
def publisher(emulator: str) -> Iterator[pubsub_v1.PublisherClient]:
    client = pubsub_v1.PublisherClient(
        publisher_options=PublisherOptions(enable_message_ordering=True)
    )
    yield client
    client.stop()


@pytest.fixture
def subscriber(emulator: str) -> Iterator[pubsub_v1.SubscriberClient]:
    client = pubsub_v1.SubscriberClient()
    yield client
    client.close()


class Inbox:
    """A streaming-pull callback that records every delivery, then acks (or as told)."""

    def __init__(self, settle: Callable[[Message, int], None] | None = None) -> None:
        self.messages: list[Message] = []
        self._settle = settle or (lambda message, _count: message.ack())
        self._changed = threading.Condition()

    def __call__(self, message: Message) -> None:
        with self._changed:
            seen = sum(1 for m in self.messages if m.message_id == message.message_id)
            self._settle(message, seen + 1)  # before recording: waiters see it settled
            self.messages.append(message)
            self._changed.notify_all()

    def wait(self, count: int, timeout: float = WAIT) -> list[Message]:
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.messages) >= count, timeout):
                raise AssertionError(f"{len(self.messages)} of {count} deliveries in {timeout} s")
            return list(self.messages)


@contextmanager
def streaming(
    subscriber: pubsub_v1.SubscriberClient, subscription: str, inbox: Inbox, max_messages: int = 100
) -> Iterator[None]:
    """Run ``subscribe`` for the block; on exit its queued acks/nacks have been sent."""
    future = subscriber.subscribe(
        subscription, inbox, flow_control=FlowControl(max_messages=max_messages)
    )
    try:
        yield
    finally:
        future.cancel()
        future.result(timeout=WAIT)


def make_topic(
    publisher: pubsub_v1.PublisherClient,
    subscriber: pubsub_v1.SubscriberClient,
    project: str,
    name: str,
    **subscription: Any,
) -> tuple[str, str]:
    topic = publisher.create_topic(name=f"{project}/topics/{name}").name
    sub = subscriber.create_subscription(
        request={"name": f"{project}/subscriptions/{name}", "topic": topic, **subscription}
    ).name
    return topic, sub


def assert_nothing_left(subscriber: pubsub_v1.SubscriberClient, subscription: str) -> None:
    """No message is available (pstest's pull waits 500 ms for one before answering)."""
    response = subscriber.pull(subscription=subscription, max_messages=100, timeout=10)
    assert list(response.received_messages) == []


def test_publish_and_streaming_pull(
    publisher: pubsub_v1.PublisherClient, subscriber: pubsub_v1.SubscriberClient, project: str
) -> None:
    topic, sub = make_topic(publisher, subscriber, project, "plain")
    futures = [
        publisher.publish(topic, f"body {i}".encode(), n=str(i), kind="test") for i in range(3)
    ]
    ids = [future.result(timeout=WAIT) for future in futures]

    inbox = Inbox()
    with streaming(subscriber, sub, inbox):
        received = inbox.wait(3)

    assert sorted(m.message_id for m in received) == sorted(ids)
    for message in received:
        n = message.attributes["n"]
        assert message.data == f"body {n}".encode()
        assert dict(message.attributes) == {"n": n, "kind": "test"}
        assert message.ordering_key == ""
        assert message.delivery_attempt is None  # only set with a dead-letter policy
    # Acked messages are gone: a nack with their (now stale) ack ids changes nothing.
    subscriber.modify_ack_deadline(
        subscription=sub, ack_ids=[m.ack_id for m in received], ack_deadline_seconds=0
    )
    assert_nothing_left(subscriber, sub)


def test_nack_redelivers_and_dead_letters(
    publisher: pubsub_v1.PublisherClient, subscriber: pubsub_v1.SubscriberClient, project: str
) -> None:
    dead_topic, dead_sub = make_topic(publisher, subscriber, project, "dead")
    policy = DeadLetterPolicy(dead_letter_topic=dead_topic, max_delivery_attempts=5)
    topic, sub = make_topic(publisher, subscriber, project, "nacked", dead_letter_policy=policy)
    kept = publisher.publish(topic, b"nacked twice", case="retry").result(timeout=WAIT)
    doomed = publisher.publish(topic, b"always nacked", case="doomed").result(timeout=WAIT)

    def settle(message: Message, count: int) -> None:
        if message.message_id == kept and count > 2:
            message.ack()
        else:
            message.nack()

    inbox, dead = Inbox(settle), Inbox()
    with streaming(subscriber, sub, inbox), streaming(subscriber, dead_sub, dead):
        dead.wait(1)
        inbox.wait(3 + 5)

    attempts: dict[str, list[int | None]] = {kept: [], doomed: []}
    for message in inbox.messages:
        attempts[message.message_id].append(message.delivery_attempt)
    assert attempts == {kept: [1, 2, 3], doomed: [1, 2, 3, 4, 5]}
    assert len({m.ack_id for m in inbox.messages}) == len(inbox.messages)  # new ack id each time
    # the dead-letter subscription is at-least-once too: a loaded machine may deliver the
    # letter again before its ack lands, but it is one message, the doomed one
    assert len({letter.message_id for letter in dead.messages}) == 1, dead.messages
    letters = {(letter.data, letter.attributes["case"]) for letter in dead.messages}
    assert letters == {(b"always nacked", "doomed")}


def test_ordering_keys(
    publisher: pubsub_v1.PublisherClient, subscriber: pubsub_v1.SubscriberClient, project: str
) -> None:
    topic, sub = make_topic(publisher, subscriber, project, "ordered", enable_message_ordering=True)
    keys, per_key = ("a", "b", "c"), 15
    futures = [
        publisher.publish(topic, f"{key}{i}".encode(), ordering_key=key)
        for i in range(per_key)
        for key in keys
    ]
    for future in futures:
        future.result(timeout=WAIT)

    inbox = Inbox()
    with streaming(subscriber, sub, inbox):
        received = inbox.wait(len(futures))

    for key in keys:
        bodies = [m.data for m in received if m.ordering_key == key]
        assert bodies == [f"{key}{i}".encode() for i in range(per_key)]

    # The server itself holds back the next message of a key until the previous one is
    # settled: a unary pull returns one message per key.
    for key in keys:
        publisher.publish(topic, b"1", ordering_key=key)
        publisher.publish(topic, b"2", ordering_key=key).result(timeout=WAIT)
    first = subscriber.pull(subscription=sub, max_messages=100, timeout=10).received_messages
    assert sorted((m.message.ordering_key, m.message.data) for m in first) == [
        (key, b"1") for key in keys
    ]
    subscriber.acknowledge(subscription=sub, ack_ids=[m.ack_id for m in first])
    second = subscriber.pull(subscription=sub, max_messages=100, timeout=10).received_messages
    assert sorted((m.message.ordering_key, m.message.data) for m in second) == [
        (key, b"2") for key in keys
    ]
    subscriber.acknowledge(subscription=sub, ack_ids=[m.ack_id for m in second])


def test_delivery_rate(
    publisher: pubsub_v1.PublisherClient,
    subscriber: pubsub_v1.SubscriberClient,
    project: str,
    record_property: Callable[[str, object], None],
) -> None:
    """Streaming pull: one message per stream per 10 ms tick; unary pull: all at once."""
    count = 300
    topic, streamed = make_topic(publisher, subscriber, project, "rate")
    pulled = subscriber.create_subscription(
        name=f"{project}/subscriptions/rate-pull", topic=topic
    ).name
    for future in [publisher.publish(topic, b"x" * 500, n=str(i)) for i in range(count)]:
        future.result(timeout=WAIT)

    inbox = Inbox()
    started = time.monotonic()
    with streaming(subscriber, streamed, inbox, max_messages=1000):
        inbox.wait(count)
        streaming_rate = count / (time.monotonic() - started)

    started, seen = time.monotonic(), 0
    while seen < count and time.monotonic() - started < WAIT:
        response = subscriber.pull(subscription=pulled, max_messages=1000, timeout=10)
        if response.received_messages:
            ack_ids = [m.ack_id for m in response.received_messages]
            subscriber.acknowledge(subscription=pulled, ack_ids=ack_ids)
            seen += len(ack_ids)
    pull_rate = seen / (time.monotonic() - started)

    record_property("streaming_pull_msgs_per_s", round(streaming_rate))
    record_property("unary_pull_msgs_per_s", round(pull_rate))
    print(f"pstest: streaming pull {streaming_rate:.0f} msgs/s, unary pull {pull_rate:.0f} msgs/s")
    assert seen == count
    assert 30 < streaming_rate < 150  # the 10 ms tick: ≈ 90 msgs/s on one stream
    assert pull_rate > streaming_rate


async def test_async_gapic_clients(pubsub_server: PubSubServer, project: str) -> None:
    """The GAPIC asyncio clients, on an explicit insecure channel (no env var needed);
    ``SubscriberAsyncClient()`` alone also works when ``PUBSUB_EMULATOR_HOST`` is set."""
    host = pubsub_server.emulator_host
    subscriber = SubscriberAsyncClient(
        transport=SubscriberGrpcAsyncIOTransport(channel=grpc.aio.insecure_channel(host))
    )
    publisher = PublisherAsyncClient(
        transport=PublisherGrpcAsyncIOTransport(channel=grpc.aio.insecure_channel(host))
    )
    try:
        topic = (await publisher.create_topic(name=f"{project}/topics/async")).name
        sub = (
            await subscriber.create_subscription(
                name=f"{project}/subscriptions/async", topic=topic, ack_deadline_seconds=10
            )
        ).name
        messages = [PubsubMessage(data=b"%d" % i, attributes={"i": str(i)}) for i in range(5)]
        await publisher.publish(topic=topic, messages=messages)

        # Unary pull, nack one (modack 0), get it again under a new ack id, ack all.
        pulled = (await subscriber.pull(subscription=sub, max_messages=10)).received_messages
        assert sorted(m.message.data for m in pulled) == [b"%d" % i for i in range(5)]
        nacked = pulled[0]
        await subscriber.modify_ack_deadline(
            subscription=sub, ack_ids=[nacked.ack_id], ack_deadline_seconds=0
        )
        again = (await subscriber.pull(subscription=sub, max_messages=10)).received_messages
        assert [m.message.message_id for m in again] == [nacked.message.message_id]
        assert again[0].ack_id != nacked.ack_id
        await subscriber.modify_ack_deadline(  # extending a lease works too
            subscription=sub, ack_ids=[again[0].ack_id], ack_deadline_seconds=30
        )
        await subscriber.acknowledge(
            subscription=sub, ack_ids=[m.ack_id for m in [*pulled[1:], *again]]
        )

        # Bidi streaming pull: requests from an async generator, acks sent on the stream.
        count = 20
        await publisher.publish(
            topic=topic, messages=[PubsubMessage(data=b"s%d" % i) for i in range(count)]
        )
        outgoing: asyncio.Queue[StreamingPullRequest | None] = asyncio.Queue()

        async def requests() -> AsyncIterator[StreamingPullRequest]:
            # protocol_version 1: the server answers an empty request with an empty response.
            yield StreamingPullRequest(
                subscription=sub, stream_ack_deadline_seconds=60, protocol_version=1
            )
            while (request := await outgoing.get()) is not None:
                yield request

        stream = await subscriber.streaming_pull(requests=requests())
        responses = aiter(stream)
        received: list[str] = []
        async with asyncio.timeout(WAIT):
            while len(received) < count:
                response: StreamingPullResponse = await anext(responses)
                batch = response.received_messages
                received += [m.message.data.decode() for m in batch]
                if batch:  # an empty request would be a ping
                    outgoing.put_nowait(StreamingPullRequest(ack_ids=[m.ack_id for m in batch]))
            # A ping after the acks: its echo means the server has processed them.
            outgoing.put_nowait(StreamingPullRequest())
            while (await anext(responses)).received_messages:
                pass
        outgoing.put_nowait(None)
        stream.cancel()
        assert sorted(received) == sorted(f"s{i}" for i in range(count))
        left = (await subscriber.pull(subscription=sub, max_messages=100)).received_messages
        assert list(left) == []
    finally:
        await subscriber.transport.close()
        await publisher.transport.close()


def test_restart_loses_state(pubsub_server: PubSubServer, emulator: str, project: str) -> None:
    publisher = pubsub_v1.PublisherClient()
    topic = publisher.create_topic(name=f"{project}/topics/ephemeral").name
    assert publisher.get_topic(topic=topic).name == topic
    pid = pubsub_server.pid()

    assert pubsub_server.stop()
    assert not pubsub_server.is_running()
    pubsub_server.start()

    assert pubsub_server.is_running() and pubsub_server.pid() != pid
    with pytest.raises(NotFound):
        publisher.get_topic(topic=topic, timeout=WAIT)  # same client: the channel reconnects
    again = publisher.create_topic(name=topic).name
    assert publisher.publish(again, b"after").result(timeout=WAIT) == "m0"
    publisher.stop()
