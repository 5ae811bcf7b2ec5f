"""The project's Service Bus test server (``tests/servers/servicebus``) against the real
``azure-servicebus`` SDK: if these pass, the bridge tests can trust it.

One server process per module, on a free loopback port, with a short lock duration and a low
max delivery count; every test uses its own queue/topic names.  Waiting is done by polling
against a deadline, never by sleeping for a fixed time.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.servicebus import ServiceBusClient as SyncClient
from azure.servicebus import (
    ServiceBusMessage,
    ServiceBusReceivedMessage,
    ServiceBusReceiveMode,
    ServiceBusSubQueue,
)
from azure.servicebus.aio import ServiceBusClient, ServiceBusReceiver
from azure.servicebus.amqp import AmqpMessageBodyType
from azure.servicebus.exceptions import MessageLockLostError

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCK_DURATION = 2.0
MAX_DELIVERY_COUNT = 3
DECLARED_TOPIC = f"orders-{uuid.uuid4().hex[:8]}"
DECLARED_SUBSCRIPTIONS = ("billing", "audit")
READY_LINE = "servicebus test server listening on"

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Server:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def connection_string(self) -> str:
        return (
            f"Endpoint=sb://127.0.0.1:{self.port};SharedAccessKeyName=k;"
            "SharedAccessKey=v;UseDevelopmentEmulator=true;"
        )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    port = _free_port()
    log = tmp_path_factory.mktemp("servicebus") / "server.log"
    command = [
        sys.executable, "-m", "tests.servers.servicebus.server",
        "--host", "127.0.0.1", "--port", str(port),
        "--lock-duration", str(LOCK_DURATION),
        "--max-delivery-count", str(MAX_DELIVERY_COUNT),
        "--topic", f"{DECLARED_TOPIC}:{','.join(DECLARED_SUBSCRIPTIONS)}",
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    deadline = time.monotonic() + 20
    while READY_LINE not in log.read_text(errors="replace"):
        assert process.poll() is None, f"server exited early:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"server not ready:\n{log.read_text()}"
        time.sleep(0.05)
    yield Server(process, port, log)
    os.kill(process.pid, signal.SIGTERM)
    try:
        code = process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise
    assert code == 0, f"server exit code {code}:\n{log.read_text()}"


@pytest.fixture
async def client(server: Server) -> AsyncIterator[ServiceBusClient]:
    assert server.process.poll() is None, f"server died:\n{server.log.read_text()}"
    async with ServiceBusClient.from_connection_string(server.connection_string) as sb:
        yield sb


@pytest.fixture
def queue() -> str:
    return f"q-{uuid.uuid4().hex[:10]}"


def body(message: ServiceBusReceivedMessage) -> bytes:
    return b"".join(message.body)


async def receive(
    receiver: ServiceBusReceiver, count: int, within: float = 10.0
) -> list[ServiceBusReceivedMessage]:
    """Exactly ``count`` messages, polling until a deadline."""
    got: list[ServiceBusReceivedMessage] = []
    deadline = time.monotonic() + within
    while len(got) < count:
        assert time.monotonic() < deadline, f"got {len(got)} of {count} messages"
        got += await receiver.receive_messages(max_message_count=count - len(got), max_wait_time=1)
    assert len(got) == count
    return got


async def assert_empty(receiver: ServiceBusReceiver) -> None:
    assert await receiver.receive_messages(max_message_count=10, max_wait_time=0.5) == []


async def send(sb: ServiceBusClient, entity: str, *bodies: str) -> None:
    async with sb.get_queue_sender(entity) as sender:
        await sender.send_messages([ServiceBusMessage(b) for b in bodies])


# -- tests -----------------------------------------------------------------------------------


async def test_send_single_and_batch_then_complete_empties_queue(
    client: ServiceBusClient, queue: str
) -> None:
    async with client.get_queue_sender(queue) as sender:
        await sender.send_messages(ServiceBusMessage("single"))
        batch = await sender.create_message_batch()
        for i in range(3):
            batch.add_message(ServiceBusMessage(f"batched-{i}"))
        await sender.send_messages(batch)
    async with client.get_queue_receiver(queue) as receiver:
        messages = await receive(receiver, 4)
        assert [body(m) for m in messages] == [b"single", b"batched-0", b"batched-1", b"batched-2"]
        assert [m.sequence_number for m in messages] == [1, 2, 3, 4]
        assert all(m.delivery_count == 0 for m in messages)
        assert len({m.lock_token for m in messages}) == 4
        for message in messages:
            await receiver.complete_message(message)
        await assert_empty(receiver)


async def test_properties_are_preserved(client: ServiceBusClient, queue: str) -> None:
    properties: dict[str | bytes, Any] = {"text": "é", "number": 42, "ratio": 0.5, "flag": True}
    async with client.get_queue_sender(queue) as sender:
        await sender.send_messages(
            ServiceBusMessage(
                b'{"a": 1}',
                application_properties=properties,
                message_id="mid-1",
                correlation_id="cid-1",
                subject="created",
                content_type="application/json",
            )
        )
    async with client.get_queue_receiver(queue) as receiver:
        [message] = await receive(receiver, 1)
        assert body(message) == b'{"a": 1}'
        assert message.body_type == AmqpMessageBodyType.DATA
        # the SDK (pyamqp) hands back string keys and string values as UTF-8 bytes
        expected = {
            str(k).encode(): v.encode() if isinstance(v, str) else v for k, v in properties.items()
        }
        assert message.application_properties == expected
        assert (message.message_id, message.correlation_id) == ("mid-1", "cid-1")
        assert (message.subject, message.content_type) == ("created", "application/json")
        assert message.enqueued_time_utc is not None
        assert message.locked_until_utc is not None
        assert message.locked_until_utc > message.enqueued_time_utc
        await receiver.complete_message(message)


async def test_abandon_redelivers_with_delivery_count_plus_one(
    client: ServiceBusClient, queue: str
) -> None:
    await send(client, queue, "retry me")
    async with client.get_queue_receiver(queue) as receiver:
        [first] = await receive(receiver, 1)
        await receiver.abandon_message(first)
        [second] = await receive(receiver, 1)
        assert body(second) == b"retry me"
        assert (first.delivery_count, second.delivery_count) == (0, 1)
        assert second.sequence_number == first.sequence_number
        await receiver.complete_message(second)
        await assert_empty(receiver)


async def test_dead_letter_goes_to_the_dead_letter_queue(
    client: ServiceBusClient, queue: str
) -> None:
    await send(client, queue, "poison")
    async with client.get_queue_receiver(queue) as receiver:
        [message] = await receive(receiver, 1)
        await receiver.dead_letter_message(
            message, reason="BadPayload", error_description="not json"
        )
        await assert_empty(receiver)
    dead = client.get_queue_receiver(queue, sub_queue=ServiceBusSubQueue.DEAD_LETTER)
    async with dead:
        [letter] = await receive(dead, 1)
        assert body(letter) == b"poison"
        assert letter.dead_letter_reason == "BadPayload"
        assert letter.dead_letter_error_description == "not json"
        await dead.complete_message(letter)
        await assert_empty(dead)


async def test_lock_expiry_redelivers_and_late_complete_fails(
    client: ServiceBusClient, queue: str
) -> None:
    await send(client, queue, "slow")
    async with client.get_queue_receiver(queue) as receiver:
        [first] = await receive(receiver, 1)
        [again] = await receive(receiver, 1, within=LOCK_DURATION + 5)
        assert again.delivery_count == 1
        assert again.lock_token != first.lock_token
        with pytest.raises(MessageLockLostError):  # the SDK checks locked_until itself
            await receiver.complete_message(first)
        with pytest.raises(MessageLockLostError):  # the server answers 410 lock-lost
            await receiver.renew_message_lock(first)
        await receiver.complete_message(again)
        await assert_empty(receiver)


async def test_max_delivery_count_dead_letters(client: ServiceBusClient, queue: str) -> None:
    await send(client, queue, "doomed")
    async with client.get_queue_receiver(queue) as receiver:
        for attempt in range(MAX_DELIVERY_COUNT):
            [message] = await receive(receiver, 1)
            assert message.delivery_count == attempt
            await receiver.abandon_message(message)
        await assert_empty(receiver)
    dead = client.get_queue_receiver(queue, sub_queue=ServiceBusSubQueue.DEAD_LETTER)
    async with dead:
        [letter] = await receive(dead, 1)
        assert body(letter) == b"doomed"
        assert letter.dead_letter_reason == "MaxDeliveryCountExceeded"
        assert letter.delivery_count == MAX_DELIVERY_COUNT
        await dead.complete_message(letter)


async def test_renew_lock_keeps_the_message_past_its_first_lock(
    client: ServiceBusClient, queue: str
) -> None:
    await send(client, queue, "long job")
    async with client.get_queue_receiver(queue) as receiver:
        [message] = await receive(receiver, 1)
        first_until = message.locked_until_utc
        assert first_until is not None
        renewed = await receiver.renew_message_lock(message)
        assert renewed >= first_until
        deadline = first_until + timedelta(seconds=LOCK_DURATION / 2)
        while renewed < deadline:  # keep renewing until well past the first lock
            renewed = await receiver.renew_message_lock(message)
            await asyncio.sleep(LOCK_DURATION / 4)
        assert message.locked_until_utc == renewed > first_until
        await receiver.complete_message(message)  # still ours: no redelivery happened
        await assert_empty(receiver)


async def test_peek_does_not_lock_or_remove(client: ServiceBusClient, queue: str) -> None:
    await send(client, queue, "p1", "p2", "p3")
    async with client.get_queue_receiver(queue) as receiver:
        peeked = await receiver.peek_messages(max_message_count=10)
        assert [body(m) for m in peeked] == [b"p1", b"p2", b"p3"]
        assert [m.sequence_number for m in peeked] == [1, 2, 3]
        later = await receiver.peek_messages(max_message_count=10, sequence_number=2)
        assert [m.sequence_number for m in later] == [2, 3]
        messages = await receive(receiver, 3)
        assert [body(m) for m in messages] == [b"p1", b"p2", b"p3"]
        for message in messages:
            await receiver.complete_message(message)
        assert await receiver.peek_messages(max_message_count=10, sequence_number=1) == []


async def test_receive_and_delete(client: ServiceBusClient, queue: str) -> None:
    await send(client, queue, "once")
    mode = ServiceBusReceiveMode.RECEIVE_AND_DELETE
    async with client.get_queue_receiver(queue, receive_mode=mode) as receiver:
        [message] = await receive(receiver, 1)
        assert body(message) == b"once"
        await assert_empty(receiver)


async def test_declared_topic_keeps_messages_sent_before_receivers(
    client: ServiceBusClient,
) -> None:
    async with client.get_topic_sender(DECLARED_TOPIC) as sender:
        await sender.send_messages(ServiceBusMessage("early"))
    for name in DECLARED_SUBSCRIPTIONS:
        async with client.get_subscription_receiver(DECLARED_TOPIC, name) as receiver:
            [message] = await receive(receiver, 1)
            assert body(message) == b"early"
            await receiver.complete_message(message)


async def test_topic_fans_out_to_registered_subscriptions(client: ServiceBusClient) -> None:
    topic = f"t-{uuid.uuid4().hex[:10]}"
    first = client.get_subscription_receiver(topic, "one")
    second = client.get_subscription_receiver(topic, "two")
    async with first, second:  # attaching a receiver registers its subscription
        async with client.get_topic_sender(topic) as sender:
            await sender.send_messages([ServiceBusMessage("e1"), ServiceBusMessage("e2")])
        for receiver in (first, second):
            messages = await receive(receiver, 2)
            assert [body(m) for m in messages] == [b"e1", b"e2"]
            for message in messages:
                await receiver.complete_message(message)
    async with client.get_subscription_receiver(topic, "late") as late:
        await assert_empty(late)  # registered after the send: sees nothing old


def test_sync_client_smoke(server: Server, queue: str) -> None:
    with SyncClient.from_connection_string(server.connection_string) as sb:
        with sb.get_queue_sender(queue) as sender:
            sender.send_messages(ServiceBusMessage("sync"))
        with sb.get_queue_receiver(queue, max_wait_time=5) as receiver:
            [message] = receiver.receive_messages(max_message_count=1, max_wait_time=5)
            assert body(message) == b"sync"
            receiver.complete_message(message)
            assert receiver.receive_messages(max_message_count=1, max_wait_time=1) == []
