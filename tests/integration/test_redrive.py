"""``headwater dlq redrive`` against a real runner: a run whose last attempt failed is in
the DLQ with what re-drives it; after the cause is fixed, a redrive completes the work
once; a second redrive starts nothing (its identity is kept)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from headwater.runner.settings import Settings
from tests.conftest import Start
from tests.kafkatools import publish, read_all, read_topic, wait_caught_up
from tests.processes import cli

pytestmark = pytest.mark.integration

PIPELINE = """\
name: load
triggers:
  - type: test.redrive
tasks:
  load: {python: "redrive_tasks:load"}
"""
TASKS = """\
import os, pathlib

def load(ctx):
    flag = pathlib.Path(os.environ["HW_FLAG_FILE"])
    if not flag.exists():
        raise ValueError("the warehouse table is missing")
    return {"loaded": ctx.event["id"]}
"""


def statuses(records: list[Any]) -> list[str]:
    return [orjson.loads(r.value)["status"] for r in records]


async def test_a_redrive_after_the_fix_completes_the_work_once(
    settings: Settings, headwater_dev: Start, tmp_path: Path
) -> None:
    flag = tmp_path / "flag"
    process = headwater_dev(
        {"load.yaml": PIPELINE, "redrive_tasks.py": TASKS}, env={"HW_FLAG_FILE": str(flag)}
    )
    await process.output_shows("headwater dev:")
    await publish(settings, "test.redrive", ["e1"])
    await read_topic(settings, settings.topics.completions, lambda r: statuses(r) == ["failed"])

    await read_topic(settings, settings.topics.dlq, lambda r: len(r) >= 1)
    listed = cli(settings, "dlq", "list", "--since", "-1h")
    assert (
        "run failed: task load failed: ValueError: the warehouse table is missing" in listed.stdout
    )
    dry = cli(settings, "dlq", "redrive", "--reason", "run failed", "--dry-run")
    assert "would redrive 1 record(s)" in dry.stdout, dry.stdout
    await asyncio.sleep(1)
    assert statuses(await read_all(settings, settings.topics.completions)) == ["failed"]
    flag.write_text("fixed")
    done = cli(settings, "dlq", "redrive", "--reason", "run failed")
    assert done.returncode == 0 and "redrove 1 record(s)" in done.stdout, done.stdout
    await read_topic(
        settings, settings.topics.completions, lambda r: statuses(r) == ["failed", "succeeded"]
    )
    again = cli(settings, "dlq", "redrive", "--reason", "run failed")
    nowhere = cli(settings, "dlq", "redrive", "999999")
    assert nowhere.returncode == 1, nowhere
    assert "no DLQ record at offset 999999" in nowhere.stderr
    assert "has since succeeded: nothing to do" in again.stdout, again.stdout
    await wait_caught_up(settings, "control", settings.topics.control)
    completions = [
        orjson.loads(r.value) for r in await read_all(settings, settings.topics.completions)
    ]
    assert [c["status"] for c in completions] == ["failed", "succeeded"]
    assert completions[1]["tasks"]["load"]["output"] == {"loaded": "e1"}
    assert completions[1]["run_id"] != completions[0]["run_id"]  # the redrive's own identity
