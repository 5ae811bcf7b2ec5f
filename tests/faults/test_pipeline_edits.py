"""Pipelines change while runs are in flight (stop, edit the files, start again):

- a task added: the run in flight finishes on the tasks it started with, new runs get the
  new one (it used to put the control processor into a KeyError crash loop, halting every
  pipeline of that partition);
- a task in flight removed, or the whole pipeline removed: the run ends with
  ``headwater.run.failed`` saying why (it used to stay ``running`` forever), and the
  other pipelines go on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from headwater.runner.settings import Settings
from tests.conftest import Start
from tests.kafkatools import by_trigger, pipeline_file, publish, read_topic

pytestmark = pytest.mark.integration

TASKS = """\
import pathlib, time

HERE = pathlib.Path(__file__).parent

def first(ctx):
    if ctx.event["id"].startswith("held"):
        (HERE / f"{ctx.event['id']}.started").touch()
        while not (HERE / "release").exists():
            time.sleep(0.05)
    return {"task": "first"}

def second(ctx):
    return {"task": "second"}
"""
ONE_TASK = pipeline_file("edited", "test.edit", {"first": '{python: "edit_tasks:first"}'})
TWO_TASKS = ONE_TASK + '  second: {python: "edit_tasks:second", needs: [first]}\n'
RENAMED = ONE_TASK.replace("  first:", "  renamed:")
OTHER = ONE_TASK.replace("name: edited", "name: other").replace("test.edit", "test.other")


def summary(records: list[Any]) -> dict[str, dict[str, Any]]:
    return {orjson.loads(r.value)["trigger"]["id"]: orjson.loads(r.value) for r in records}


async def start_held_run(settings: Settings, headwater_dev: Start, folder: Path) -> Any:
    runner = headwater_dev({"edited.yaml": ONE_TASK, "other.yaml": OTHER, "edit_tasks.py": TASKS})
    await runner.output_shows("headwater dev:")
    await publish(settings, "test.edit", ["held-1"])
    while not (folder / "held-1.started").exists():
        await runner.output_shows("headwater dev:", within=1)  # polls; fails if it died
    runner.kill()  # the run is in flight: its first task is running
    return runner


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path / "pipelines"


async def test_a_task_added_while_a_run_is_in_flight(
    settings: Settings, headwater_dev: Start, folder: Path
) -> None:
    await start_held_run(settings, headwater_dev, folder)
    (folder / "release").touch()
    runner = headwater_dev({"edited.yaml": TWO_TASKS})
    await publish(settings, "test.edit", ["new-1"])
    done = await read_topic(
        settings, settings.topics.completions, lambda rs: {"held-1", "new-1"} <= set(summary(rs))
    )
    runs = summary(done)
    assert runs["held-1"]["status"] == "succeeded" and set(runs["held-1"]["tasks"]) == {"first"}
    assert runs["new-1"]["status"] == "succeeded"
    assert set(runs["new-1"]["tasks"]) == {"first", "second"}
    assert len(by_trigger(done)["held-1"]) == 1
    assert runner.process is not None and runner.process.poll() is None


@pytest.mark.parametrize(
    ("files", "says"),
    [
        ({"edited.yaml": RENAMED}, "task 'first' was removed"),
        ({"edited.yaml": None}, "pipeline 'edited' is no longer loaded"),
    ],
    ids=["task-renamed", "pipeline-removed"],
)
async def test_a_run_whose_definition_is_gone_fails_with_the_reason(
    settings: Settings,
    headwater_dev: Start,
    folder: Path,
    files: dict[str, str | None],
    says: str,
) -> None:
    await start_held_run(settings, headwater_dev, folder)
    (folder / "release").touch()
    for name, text in files.items():
        if text is None:
            (folder / name).unlink()
    runner = headwater_dev({k: v for k, v in files.items() if v is not None})
    await publish(settings, "test.other", ["other-1"])
    done = await read_topic(
        settings,
        settings.topics.completions,
        lambda rs: {"held-1", "other-1"} <= set(summary(rs)),
    )
    runs = summary(done)
    assert runs["held-1"]["status"] == "failed" and says in runs["held-1"]["error"]
    assert runs["other-1"]["status"] == "succeeded"
    assert runner.process is not None and runner.process.poll() is None
