"""Test helpers that read the central log the way a downstream service would."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from headwater.runner.envelope import CloudEvent, to_kafka
from headwater.runner.log import kafka
from headwater.runner.log.reader import read_now
from headwater.runner.settings import Settings


def _reader(settings: Settings, topic: str) -> AIOKafkaConsumer:
    """A group-less consumer of ``topic`` from the beginning, committed records only."""
    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka.bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )


async def read_topic(
    settings: Settings,
    topic: str,
    until: Callable[[list[Any]], bool],
    within: float = 60.0,
    stalled: float | None = None,
) -> list[Any]:
    """Read ``topic`` from the beginning (committed records only) until ``until(records)``
    holds; fails with what was read if the deadline passes first. With ``stalled``, the
    deadline is instead ``stalled`` seconds without a new record (``within`` still caps it):
    for a drain whose speed depends on how busy the shared machine is."""
    consumer = _reader(settings, topic)
    await consumer.start()
    records: list[Any] = []
    started = last_new = time.monotonic()
    try:
        while not until(records):
            now = time.monotonic()
            if now - started > within or (stalled is not None and now - last_new > stalled):
                shown = records if len(records) <= 20 else [*records[:10], "...", *records[-10:]]
                raise AssertionError(
                    f"timed out reading {topic} after {now - started:.0f} s; "
                    f"got {len(records)}: {shown}"
                )
            batch = await consumer.getmany(timeout_ms=250)
            for partition_records in batch.values():
                records.extend(partition_records)
                last_new = time.monotonic()
        return records
    finally:
        await consumer.stop()


async def read_all(settings: Settings, topic: str) -> list[Any]:
    """Every committed record of ``topic`` written so far (headwater's own topic reader)."""
    return [record async for records in read_now(settings, topic) for record in records]


async def poll(
    check: Callable[[], Awaitable[tuple[bool, Any]]], within: float, failure: str
) -> None:
    """Await ``check()`` -> (done, state) every 0.2 s until done; past ``within`` seconds,
    fail with ``failure`` and the last state."""
    deadline = time.monotonic() + within
    while True:
        done, state = await check()
        if done:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{failure}: {state}")
        await asyncio.sleep(0.2)


async def wait_caught_up(settings: Settings, role: str, topic: str, within: float = 60.0) -> None:
    """Poll until consumer group ``role`` has committed up to the end of ``topic``:
    everything written there so far has been fully processed."""
    group = settings.topics.group(role)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap)
    probe = AIOKafkaConsumer(bootstrap_servers=settings.kafka.bootstrap, group_id=None)
    await admin.start()
    await probe.start()
    try:
        await probe.topics()  # the cluster's metadata, for the topic's partitions
        partitions = [TopicPartition(topic, p) for p in probe.partitions_for_topic(topic) or ()]

        async def lag() -> tuple[bool, dict[TopicPartition, int]]:
            ends = await probe.end_offsets(partitions)
            committed = await admin.list_consumer_group_offsets(group)
            behind = {
                tp: end - (committed[tp].offset if tp in committed else 0)
                for tp, end in ends.items()
            }
            return all(v <= 0 for v in behind.values()), behind

        await poll(lag, within, f"group {group} still behind on {topic}")
    finally:
        await probe.stop()
        await admin.close()


async def wait_for_members(
    settings: Settings, roles: Iterable[str], members: int, within: float = 60.0
) -> None:
    """Poll until each consumer group ``role`` is stable with ``members`` members: every
    process has joined and the rebalances the joins caused are over."""
    groups = [settings.topics.group(role) for role in roles]
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap)
    await admin.start()

    async def stable() -> tuple[bool, dict[str, tuple[str, int]]]:
        states = {}
        for group in groups:  # one at a time: aiokafka misreads a reply about several
            for response in await admin.describe_consumer_groups([group]):
                for described in response.groups:  # (error, id, state, type, protocol, members…)
                    states[group] = (described[2], len(described[5]))
        return all(states.get(g) == ("Stable", members) for g in groups), states

    try:
        await poll(stable, within, f"consumer groups not stable with {members} members")
    finally:
        await admin.close()


async def publish(
    settings: Settings,
    kind: str,
    ids: Iterable[int | str],
    *,
    subject: str | None = None,
    key: bytes | None = None,
) -> None:
    """Write test CloudEvents (source ``/test``, empty data) of type ``kind`` to the events
    topic, one per id, keyed by ``key`` (one partition) or else by each event's id."""
    producer = kafka.producer(settings)
    await producer.start()
    try:
        for i in ids:
            event = CloudEvent(id=str(i), source="/test", type=kind, subject=subject, data={})
            headers, value = to_kafka(event)
            record_key = key if key is not None else event.id.encode()
            await producer.send(settings.topics.events, value, headers=headers, key=record_key)
        await producer.flush()
    finally:
        await producer.stop()


def by_trigger(records: list[Any]) -> dict[str, list[str]]:
    """Completion types (``headwater.run.succeeded``/``failed``) per trigger event id."""
    found: dict[str, list[str]] = {}
    for record in records:
        headers = dict(record.headers)
        data = orjson.loads(record.value)
        found.setdefault(data["trigger"]["id"], []).append(headers["ce_type"].decode())
    return found


async def eventually(check: Callable[[], bool], what: str, within: float = 30.0) -> None:
    """Poll ``check`` until it holds; fail naming ``what`` if ``within`` seconds pass."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within:g}s waiting for {what}")
        await asyncio.sleep(0.05)


def pipeline_file(
    name: str, trigger: str, tasks: dict[str, str], *, batch: str | None = None
) -> str:
    """A pipeline file's text: one trigger on ``trigger`` (batching if ``batch`` is given,
    as YAML flow text) and ``tasks`` (name -> the task's YAML flow mapping)."""
    lines = [f"name: {name}", "triggers:", f"  - type: {trigger}"]
    if batch is not None:
        lines.append(f"    batch: {batch}")
    lines.append("tasks:")
    lines += [f"  {task}: {spec}" for task, spec in tasks.items()]
    return "\n".join(lines) + "\n"
