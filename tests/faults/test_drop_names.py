"""Two files of the same name dropped one after the other: each run reads its own file,
and both stay in ``processed/`` (the second used to overwrite the first, also while the
first one's run was still reading it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from headwater.runner.settings import Settings
from tests.conftest import Start
from tests.kafkatools import eventually, pipeline_file, read_topic

pytestmark = pytest.mark.integration

FILES = {
    "dropped.yaml": pipeline_file(
        "dropped", "headwater.file.created", {"read": '{python: "drop_tasks:read"}'}
    ),
    "drop_tasks.py": """\
import pathlib

def read(ctx):
    return {"text": pathlib.Path(ctx.event["data"]["path"]).read_text()}
""",
}


async def test_a_file_of_the_same_name_never_overwrites_the_first(
    settings: Settings, headwater_dev: Start, tmp_path: Path
) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    runner = headwater_dev(FILES, args=("--drop", str(drop)))
    await runner.output_shows("headwater dev:")

    def texts(records: list[Any]) -> list[str]:
        return [orjson.loads(r.value)["tasks"]["read"]["output"]["text"] for r in records]

    completions = settings.topics.completions
    (drop / "report.csv").write_text("first\n")
    await read_topic(settings, completions, lambda rs: texts(rs) == ["first\n"])
    await eventually(lambda: not (drop / "report.csv").exists(), "the first file to move")
    (drop / "report.csv").write_text("second, longer\n")
    records = await read_topic(settings, completions, lambda rs: len(texts(rs)) == 2)
    assert texts(records) == ["first\n", "second, longer\n"]
    kept = sorted(p.read_text() for p in (drop / "processed").rglob("report.csv"))
    assert kept == ["first\n", "second, longer\n"]
