"""One behaviour suite, run against every source (SQS, Pub/Sub, Service Bus, webhook, drop
folder) with a real ``headwater dev`` process, real Kafka and the real or test servers.

1. a published message appears once in the log as a CloudEvent the official SDK reads;
2. ack after Kafka ack: with Kafka stopped nothing is acked, and all arrives once it is back;
3. the bridge killed (SIGKILL) mid-batch loses nothing, and each event runs once;
4. the source's server restarted under the bridge: it reconnects and goes on;
5. per-key order is kept into the log;
6. malformed input is dead-lettered (at the source or in the DLQ topic), the stream goes on;
7. SIGTERM settles in-flight deliveries: nothing is acked that was not written.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from cloudevents.core.bindings.kafka import KafkaMessage
from cloudevents.core.bindings.kafka import from_kafka as sdk_from_kafka
from cloudevents.core.formats.json import JSONFormat

from headwater.runner.envelope import from_kafka
from headwater.runner.errors import BadMessage
from headwater.runner.settings import Settings
from tests.conformance.clouds import PubSubHarness, ServiceBusHarness
from tests.conformance.harness import SourceHarness
from tests.conformance.local_sources import FileDropHarness, WebhookHarness
from tests.conformance.sqs import SqsHarness
from tests.kafkatools import read_all, read_topic, wait_caught_up
from tests.processes import HeadwaterProcess
from tests.servers.services import KafkaServer

pytestmark = pytest.mark.integration
PIPELINES = Path(__file__).parent / "pipelines"
HARNESSES: dict[str, type[SourceHarness]] = {
    "sqs": SqsHarness,
    "pubsub": PubSubHarness,
    "servicebus": ServiceBusHarness,
    "webhook": WebhookHarness,
    "filedrop": FileDropHarness,
}


class Bridge:
    """A ``headwater dev`` process bridging one source, and what it wrote to the log."""

    def __init__(self, harness: SourceHarness, settings: Settings, log: Path) -> None:
        self.harness = harness
        self.settings = settings
        self.log = log
        self.process = self._new()

    def _new(self) -> HeadwaterProcess:
        env = {**self.harness.dev_env(), "HEADWATER_KAFKA_REQUEST_TIMEOUT_MS": "5000"}
        return HeadwaterProcess(
            ["dev", str(PIPELINES), *self.harness.dev_args()], self.settings, self.log, env=env
        )

    def start(self) -> None:
        self.process = self._new().start()
        self.process.wait_for_output(": connected")  # the source is being read

    async def records(
        self, until: Callable[[list[tuple[int, Any]]], bool], within: float = 90.0
    ) -> list[tuple[int, Any]]:
        """(seq, record) of this test's events in ``events``, in log order per partition,
        once ``until`` holds for them."""
        topic = self.settings.topics.events
        records = await read_topic(self.settings, topic, lambda rs: until(self.ours(rs)), within)
        return self.ours(records)

    async def everything(self) -> list[tuple[int, Any]]:
        """All of this test's events written to ``events`` so far."""
        return self.ours(await read_all(self.settings, self.settings.topics.events))

    def ours(self, records: list[Any]) -> list[tuple[int, Any]]:
        found = []
        for record in records:
            try:
                payload = self.harness.payload(from_kafka(record.headers, record.value))
            except BadMessage:
                continue
            if payload is not None:
                found.append((payload["seq"], record))
        return found

    async def bridged(self, seqs: set[int], within: float = 90.0) -> Counter[int]:
        """Wait until every seq in ``seqs`` is in the log; how often each one is there."""
        found = await self.records(lambda rs: seqs <= {seq for seq, _ in rs}, within)
        return Counter(seq for seq, _ in found)

    async def completions(self, count: int) -> Counter[str]:
        """Wait for ``count`` distinct runs to complete; completions per run id."""

        def ids(records: list[Any]) -> Counter[str]:
            return Counter(dict(r.headers)["ce_id"].decode() for r in records)

        records = await read_topic(
            self.settings,
            self.settings.topics.completions,
            lambda rs: len(ids(rs)) >= count,
            within=120,
        )
        return ids(records)

    async def settled(self) -> None:
        await wait_caught_up(self.settings, "router", self.settings.topics.events)
        await wait_caught_up(self.settings, "control", self.settings.topics.control)


@pytest.fixture(params=sorted(HARNESSES))
async def harness(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SourceHarness]:
    ordered = request.node.get_closest_marker("ordered") is not None
    harness = HARNESSES[request.param](uuid.uuid4().hex[:10], tmp_path, ordered=ordered)
    await harness.setup()
    yield harness


@pytest.fixture
def bridge(harness: SourceHarness, settings: Settings, tmp_path: Path) -> Any:
    bridge = Bridge(harness, settings, tmp_path / "headwater.log")
    yield bridge
    if bridge.process.process is not None:
        bridge.process.stop()


async def test_published_messages_reach_the_log_once_as_cloudevents(
    harness: SourceHarness, bridge: Bridge
) -> None:
    bridge.start()
    await harness.publish([(seq, None) for seq in range(5)])
    await harness.settle_publishers()
    counts = await bridge.bridged(set(range(5)))
    await wait_caught_up(bridge.settings, "router", bridge.settings.topics.events)
    found = await bridge.records(lambda rs: len(rs) >= 5)
    assert Counter(seq for seq, _ in found) == counts == Counter(range(5))
    for _, record in found:
        message = KafkaMessage(headers=dict(record.headers), key=record.key, value=record.value)
        event = sdk_from_kafka(message, JSONFormat())
        assert event.get_specversion() == "1.0" and event.get_id()
        assert event.get_extension("hwbridge") == harness.kind


@pytest.mark.timeout(300)
async def test_nothing_is_acked_while_kafka_is_down(
    harness: SourceHarness, bridge: Bridge, kafka_server: KafkaServer
) -> None:
    bridge.start()
    await harness.publish([(0, None)])
    await bridge.bridged({0})
    kafka_server.stop()
    try:
        await harness.publish([(seq, None) for seq in (1, 2, 3)])
        await bridge.process.output_shows("will be redelivered", within=90)
    finally:
        kafka_server.start()
    await harness.settle_publishers()
    await bridge.bridged({0, 1, 2, 3}, within=120)


@pytest.mark.timeout(300)
async def test_a_bridge_killed_mid_batch_loses_nothing_and_each_event_runs_once(
    harness: SourceHarness, bridge: Bridge
) -> None:
    everything = set(range(30))
    await harness.publish([(seq, None) for seq in sorted(everything)])
    bridge.start()
    await bridge.records(lambda rs: len(rs) >= 3)
    bridge.process.kill()
    bridge.start()
    await harness.settle_publishers()
    await bridge.bridged(everything, within=120)
    await bridge.completions(len(everything))
    await bridge.settled()
    completions = await bridge.completions(len(everything))
    assert len(completions) == len(everything)
    assert set(completions.values()) == {1}, "a duplicate event reached a second completion"


@pytest.mark.timeout(300)
async def test_the_bridge_reconnects_after_its_source_server_restarts(
    harness: SourceHarness, bridge: Bridge
) -> None:
    if harness.server is None and not isinstance(harness, FileDropHarness):
        pytest.skip(f"{harness.kind}: the bridge is the server; there is nothing to restart")
    bridge.start()
    await harness.publish([(0, None)])
    await bridge.bridged({0})
    await harness.stop_source()
    try:
        await bridge.process.output_shows("connection lost", within=60)
    finally:
        await harness.start_source()
    await harness.publish([(1, None), (2, None)])
    await bridge.bridged({0, 1, 2}, within=120)


@pytest.mark.ordered
async def test_order_per_key_is_kept(harness: SourceHarness, bridge: Bridge) -> None:
    keys = ("alpha", "beta")
    messages = [(seq, keys[seq % 2]) for seq in range(20)]
    await harness.publish(messages)
    bridge.start()
    await harness.settle_publishers()
    found = await bridge.records(lambda rs: {s for s, _ in rs} >= set(range(20)))
    by_key: dict[bytes, list[int]] = {}
    for seq, record in found:
        by_key.setdefault(record.key, []).append(seq)
    for key, seqs in by_key.items():
        first_seen = list(dict.fromkeys(seqs))  # at-least-once may repeat, never reorder
        assert first_seen == sorted(first_seen), f"key {key!r} out of order: {seqs}"
    if not isinstance(harness, FileDropHarness):  # a folder is one key
        assert {k.decode() for k in by_key} == set(keys)


async def test_malformed_input_is_dead_lettered_and_the_stream_goes_on(
    harness: SourceHarness, bridge: Bridge
) -> None:
    bridge.start()
    handle = await harness.publish_malformed()
    await harness.publish([(0, None), (1, None)])
    await harness.settle_publishers()
    await bridge.bridged({0, 1})
    await harness.check_malformed(handle, bridge.settings)


@pytest.mark.timeout(300)
async def test_sigterm_acks_only_what_was_written(harness: SourceHarness, bridge: Bridge) -> None:
    everything = set(range(30))
    await harness.publish([(seq, None) for seq in sorted(everything)])
    bridge.start()
    await bridge.records(lambda rs: len(rs) >= 3)
    assert bridge.process.stop() == 0, bridge.process.output()
    written = {seq for seq, _ in await bridge.everything()}
    accepted = harness.accepted()
    for task in getattr(harness, "_senders", []):
        task.cancel()
    remaining = await harness.remaining()
    assert written | remaining >= everything - _unsent(harness, everything), (
        f"lost: {sorted(everything - written - remaining)}"
    )
    if accepted is not None:
        assert accepted <= written, f"acknowledged but not written: {accepted - written}"


def _unsent(harness: SourceHarness, everything: set[int]) -> set[int]:
    """A webhook sender stopped with the bridge never handed the rest over: not lost."""
    accepted = harness.accepted()
    return set() if accepted is None else everything - accepted
