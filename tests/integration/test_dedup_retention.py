"""The dedup retention against the real Kafka and a real ``headwater dev`` process: a
trigger event seen again within the retention starts nothing; after it, its marker is gone
from the changelog (a tombstone) and from the local store on disk (the event starts a new
run)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from headwater.runner.runs.machine import run_id_for
from headwater.runner.settings import Settings
from tests.kafkatools import pipeline_file, publish, read_all, read_topic
from tests.processes import HeadwaterProcess

pytestmark = pytest.mark.integration

PIPELINE = pipeline_file("kept", "test.once", {"noop": '{python: "kept_tasks:noop"}'})
TASKS = """\
async def noop(ctx):
    return None
"""
RETENTION = 8.0  # markers are swept every 2 s (a quarter of it)


@pytest.fixture
def runner(settings: Settings, tmp_path: Path) -> Iterator[HeadwaterProcess]:
    (tmp_path / "kept.yaml").write_text(PIPELINE)
    (tmp_path / "kept_tasks.py").write_text(TASKS)
    env = {"HEADWATER_DEDUP_RETENTION": f"{RETENTION:g}s"}
    process = HeadwaterProcess(["dev", str(tmp_path)], settings, tmp_path / "hw.log", env)
    process.start()
    try:
        yield process
    finally:
        process.stop()


def runs_of(records: list[Any], event_id: str) -> int:
    return sum(orjson.loads(r.value)["trigger"]["id"] == event_id for r in records)


def stored_keys(tmp_path: Path, prefix: bytes) -> list[bytes]:
    """Keys under ``prefix`` in every control partition's store the runner keeps."""
    from rocksdict import AccessType, Options, Rdict

    found = []
    for folder in sorted((tmp_path / "state").glob("*/*")):
        if not folder.is_dir():
            continue
        db = Rdict(str(folder), Options(raw_mode=True), access_type=AccessType.read_only())
        try:
            for stored in db.keys(from_key=prefix):
                if not stored.startswith(prefix):
                    break
                found.append(stored)
        finally:
            db.close()
    return found


async def test_a_marker_refuses_a_duplicate_within_the_retention_and_is_deleted_after_it(
    settings: Settings, runner: HeadwaterProcess, tmp_path: Path
) -> None:
    await runner.output_shows("headwater dev:")
    completions = settings.topics.completions
    await publish(settings, "test.once", ["x"])
    await read_topic(settings, completions, lambda records: runs_of(records, "x") == 1)
    await asyncio.sleep(RETENTION / 2 + 0.5)  # two sweeps or more, still within the retention
    await publish(settings, "test.once", ["x"])  # refused
    await publish(settings, "test.once", ["y"])
    await read_topic(settings, completions, lambda records: runs_of(records, "y") == 1)
    await asyncio.sleep(1.0)
    assert runs_of(await read_all(settings, completions), "x") == 1

    # After the retention the sweep deletes the marker: a tombstone in the changelog ...
    key = run_id_for("kept", "x", "/test").encode()
    tombstoned = await read_topic(
        settings,
        settings.topics.runs,
        lambda records: any(r.key == key and r.value is None for r in records),
        within=RETENTION * 4,
    )
    assert [r.value is None for r in tombstoned if r.key == key][-1]
    # ... and neither the marker nor its expiry index entry is left in the store on disk
    # (read through a read-only view of the running process's store)
    assert stored_keys(tmp_path, b"m" + key) == []
    assert [k for k in stored_keys(tmp_path, b"x") if k.endswith(b"m" + key)] == []
    assert stored_keys(tmp_path, b"m") != []  # y's marker: the view does see markers
    # ... and the event, seen again, starts a new run
    await publish(settings, "test.once", ["x"])
    await read_topic(settings, completions, lambda records: runs_of(records, "x") == 2)
