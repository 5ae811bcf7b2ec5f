"""Batching windows hold every event exactly once, whatever the source and the files do:

- a source that redelivers an event after its window closed (an SQS visibility timeout,
  a Pub/Sub ack deadline): the event joins no later window (it used to: the window only
  remembered the ids it held while open, so the event ran twice);
- a pipeline edited while a window is open (another trigger put before the batching one,
  its ``max_wait`` tuned): the window closes under the edited trigger with the events it
  held (windows used to be keyed by the trigger's position: the restored window pointed
  at the new, non-batching trigger, was never closed, and its events were gone).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from headwater.runner.settings import Settings
from tests.conftest import Start
from tests.kafkatools import pipeline_file, publish, read_all, read_topic

pytestmark = pytest.mark.integration

TASKS = 'def ids(ctx):\n    return {"ids": [e["id"] for e in ctx.events]}\n'
COUNT = {"ids": '{python: "window_tasks:ids"}'}


def batched_ids(records: list[Any]) -> list[str]:
    """Every event id that reached a run, once per run it reached."""
    found: list[str] = []
    for record in records:
        run = orjson.loads(record.value)
        assert run["status"] == "succeeded", run
        found += run["tasks"]["ids"]["output"]["ids"]
    return found


def window_holds(count: int) -> Any:
    """Whether the changelog read so far has a window record holding ``count`` events."""

    def check(records: list[Any]) -> bool:
        windows = [r for r in records if r.key.startswith(b"window:") and r.value is not None]
        return any(len(orjson.loads(r.value)["events"]) == count for r in windows)

    return check


async def test_a_redelivery_after_its_window_closed_runs_no_second_time(
    settings: Settings, headwater_dev: Start
) -> None:
    files = {
        "readings.yaml": pipeline_file(
            "readings", "sensor.reading", COUNT, batch="{max_events: 3, max_wait: 30s}"
        ),
        "window_tasks.py": TASKS,
    }
    runner = headwater_dev(files)
    await runner.output_shows("headwater dev:")
    completions = settings.topics.completions
    await publish(settings, "sensor.reading", ["e1", "e2", "e3"], key=b"k")
    await read_topic(settings, completions, lambda rs: len(batched_ids(rs)) >= 3)
    # e2 again (the source redelivered it), then three new events: one full window.
    await publish(settings, "sensor.reading", ["e2", "e4", "e5", "e6"], key=b"k")
    await read_topic(settings, completions, lambda rs: len(batched_ids(rs)) >= 6)
    seen = Counter(batched_ids(await read_all(settings, completions)))
    assert seen == Counter(["e1", "e2", "e3", "e4", "e5", "e6"]), seen
    assert runner.process is not None and runner.process.poll() is None


async def test_an_open_window_survives_an_edit_that_moves_its_trigger(
    settings: Settings, headwater_dev: Start, tmp_path: Path
) -> None:
    before = pipeline_file(
        "moved", "sensor.reading", COUNT, batch="{max_events: 100, max_wait: 1h}"
    )
    runner = headwater_dev({"moved.yaml": before, "window_tasks.py": TASKS})
    await runner.output_shows("headwater dev:")
    await publish(settings, "sensor.reading", ["m1", "m2"], key=b"k")
    dlq = settings.topics.dlq
    folder = tmp_path / "pipelines"
    await read_topic(settings, settings.topics.runs, window_holds(2))  # m1 and m2, committed
    runner.kill()
    after = before.replace("triggers:\n", "triggers:\n  - type: manual.start\n").replace(
        "max_wait: 1h", "max_wait: 2s"
    )
    (folder / "moved.yaml").write_text(after)
    runner = headwater_dev({})
    await runner.output_shows("headwater dev:")
    await publish(settings, "sensor.reading", ["m3"], key=b"k")
    completions = settings.topics.completions
    await read_topic(settings, completions, lambda rs: len(batched_ids(rs)) >= 3, within=45)
    seen = Counter(batched_ids(await read_all(settings, completions)))
    assert seen == Counter(["m1", "m2", "m3"]), seen
    assert await read_all(settings, dlq) == []
    assert runner.process is not None and runner.process.poll() is None
