"""Joins against the real Kafka with a real process: A then B, B then A, A twice then B
each start one run with every joined event; B alone expires after the window and is
reported on ``hw.status`` (a later A starts nothing); a SIGKILL between A and B loses
nothing and starts one run."""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import orjson
import pytest

from headwater.runner.envelope import CloudEvent, to_kafka
from headwater.runner.log import kafka
from headwater.runner.settings import Settings
from tests.conftest import Start
from tests.kafkatools import read_all, read_topic, wait_caught_up

pytestmark = pytest.mark.integration


def pipeline(name: str, prefix: str, within: str) -> str:
    return f"""\
name: {name}
triggers:
  - id: paid
    type: {prefix}.paid
  - id: shipped
    type: {prefix}.shipped
join: {{all: [paid, shipped], key: data.order_id, within: {within}}}
tasks:
  pack: {{python: "join_tasks:pack"}}
"""


TASKS = """\
def pack(ctx):
    return {"order": ctx.event["data"]["key"], "events": [e["id"] for e in ctx.events]}
"""


async def send(settings: Settings, *events: tuple[str, str, str]) -> None:
    """(type, id, order) events to the events topic, in order."""
    producer = kafka.producer(settings)
    await producer.start()
    try:
        for kind, event_id, order in events:
            event = CloudEvent(event_id, "/shop", kind, {"order_id": order})
            headers, value = to_kafka(event)
            await producer.send_and_wait(
                settings.topics.events, value, key=order.encode(), headers=headers
            )
    finally:
        await producer.stop()


def runs(records: list[Any]) -> dict[str, list[list[str]]]:
    out: dict[str, list[list[str]]] = collections.defaultdict(list)
    for record in records:
        completion = orjson.loads(record.value)
        assert completion["status"] == "succeeded", completion
        output = completion["tasks"]["pack"]["output"]
        out[output["order"]].append(output["events"])
    return out


async def test_joins_start_one_run_when_complete_and_report_what_expired(
    settings: Settings, headwater_dev: Start
) -> None:
    files = {
        "orders.yaml": pipeline("orders", "shop", "2m"),
        "quick.yaml": pipeline("quick", "quick", "3s"),
        "join_tasks.py": TASKS,
    }
    process = headwater_dev(files)
    await process.output_shows("headwater dev:")
    await send(
        settings,
        ("shop.paid", "a1", "o1"),
        ("shop.shipped", "b1", "o1"),
        ("shop.shipped", "b2", "o2"),
        ("shop.paid", "a2", "o2"),
        ("shop.paid", "a3", "o3"),
        ("shop.paid", "a3bis", "o3"),
        ("shop.paid", "a3", "o3"),  # the same event again: counted once
        ("shop.shipped", "b3", "o3"),
        ("quick.shipped", "b4", "o4"),
        ("shop.paid", "a5", "o5"),
    )
    completions = settings.topics.completions
    await read_topic(settings, completions, lambda r: len(r) >= 3)
    # o5 has its A only; it is in the run table's changelog when the process dies
    await wait_caught_up(settings, "control", settings.topics.control)
    process.kill()
    process = headwater_dev(files)
    await process.output_shows("headwater dev:")
    await asyncio.sleep(4)  # o4's window (3 s) is over
    await send(settings, ("shop.shipped", "b5", "o5"), ("quick.paid", "a4", "o4"))
    await read_topic(settings, completions, lambda r: "o5" in runs(r))
    status = settings.topics.status

    def expired(records: list[Any]) -> list[dict[str, Any]]:
        found = []
        for record in records:
            headers = dict(record.headers)
            if headers.get("ce_type") == b"headwater.join.expired":
                found.append(orjson.loads(record.value))
        return found

    reports = expired(await read_topic(settings, status, lambda r: len(expired(r)) >= 2, 60))
    await wait_caught_up(settings, "control", settings.topics.control)
    done = runs(await read_all(settings, completions))
    assert done == {
        "o1": [["a1", "b1"]],
        "o2": [["b2", "a2"]],
        "o3": [["a3", "a3bis", "b3"]],
        "o5": [["a5", "b5"]],
    }
    # o4: B expired with A missing; A after the window opened a join of its own, which
    # expired too (no run)
    o4 = [r for r in reports if r["key"] == "o4"]
    assert [(r["matched"], r["missing"]) for r in o4[:2]] == [
        (["shipped"], ["paid"]),
        (["paid"], ["shipped"]),
    ], reports
    assert all(r["pipeline"] == "quick" for r in o4)
