"""``headwater replay`` and ``headwater backfill`` as a user runs them, against the real
Kafka: a span of 100 events of which 30 already ran; ``--only-missing --dry-run`` lists
the 70, the replay runs them, a second replay runs none; a plain replay would run all
100 again under an identity of its own. A backfill fills the ticks that never ran."""

from __future__ import annotations

import asyncio
import collections
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from headwater.runner.envelope import CloudEvent, to_kafka
from headwater.runner.log import kafka
from headwater.runner.settings import Settings
from tests.conftest import Start
from tests.kafkatools import read_all, read_topic, wait_caught_up
from tests.processes import HeadwaterProcess, cli

pytestmark = pytest.mark.integration

REPLAYED = """\
name: replayed
triggers:
  - type: test.replay
tasks:
  note: {python: "replay_tasks:note"}
"""
OTHER = """\
name: other
triggers:
  - type: test.other
tasks:
  note: {python: "replay_tasks:note"}
"""
TASKS = """\
def note(ctx):
    return {"event": ctx.event["id"], "replay": ctx.event.get("headwaterreplay")}
"""


async def send(settings: Settings, ids: range) -> None:
    producer = kafka.producer(settings)
    await producer.start()
    try:
        for i in ids:
            headers, value = to_kafka(CloudEvent(str(i), "/test", "test.replay", {"n": i}))
            await producer.send_and_wait(
                settings.topics.events, value, key=str(i).encode(), headers=headers
            )
    finally:
        await producer.stop()


def iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat()


def completed(records: list[Any], pipeline: str) -> list[dict[str, Any]]:
    values = [orjson.loads(r.value) for r in records]
    return [v for v in values if v["pipeline"] == pipeline and v["status"] == "succeeded"]


async def test_replay_runs_only_the_missing_events_once(
    settings: Settings, headwater_dev: Start, tmp_path: Path
) -> None:
    files = {"replayed.yaml": REPLAYED, "replay_tasks.py": TASKS}
    started = time.time() - 1
    process = headwater_dev(files)
    await process.output_shows("headwater dev:")
    await send(settings, range(30))
    await read_topic(settings, settings.topics.completions, lambda r: len(r) >= 30)
    process.stop()
    # 70 more while the pipeline is not loaded: routed past, never run
    folder = tmp_path / "pipelines"
    (folder / "replayed.yaml").rename(tmp_path / "replayed.yaml.off")
    (folder / "other.yaml").write_text(OTHER)
    process = headwater_dev({})
    await process.output_shows("headwater dev:")
    await send(settings, range(30, 100))
    await wait_caught_up(settings, "router", settings.topics.events)
    process.stop()
    ended = time.time() + 1
    (tmp_path / "replayed.yaml.off").rename(folder / "replayed.yaml")
    process = headwater_dev({})
    await process.output_shows("headwater dev:")
    span = ("--from", iso(started), "--to", iso(ended))
    path = str(folder)

    dry = cli(
        settings, "replay", path, "--pipeline", "replayed", *span, "--only-missing", "--dry-run"
    )
    assert dry.returncode == 0, dry.stderr
    would = [line for line in dry.stdout.splitlines() if line.startswith("run  event ")]
    skips = [line for line in dry.stdout.splitlines() if line.startswith("skip event ")]
    assert sorted(int(line.split()[2]) for line in would) == list(range(30, 100))
    assert len(skips) == 30
    assert "would request 70 run(s)" in dry.stdout
    await asyncio.sleep(1)
    assert len(completed(await read_all(settings, settings.topics.completions), "replayed")) == 30

    real = cli(settings, "replay", path, "--pipeline", "replayed", *span, "--only-missing")
    assert real.returncode == 0, real.stderr
    assert "requested 70 run(s)" in real.stdout, real.stdout
    done = completed(
        await read_topic(
            settings,
            settings.topics.completions,
            lambda r: len(completed(r, "replayed")) >= 100,
        ),
        "replayed",
    )
    per_event = collections.Counter(d["trigger"]["id"] for d in done)
    assert sorted(per_event, key=int) == [str(i) for i in range(100)]
    assert set(per_event.values()) == {1}
    replays = {d["tasks"]["note"]["output"]["replay"] for d in done}
    assert len(replays - {None}) == 1  # the 70 carry the replay's id

    again = cli(settings, "replay", path, "--pipeline", "replayed", *span, "--only-missing")
    assert again.returncode == 0 and "requested 0 run(s)" in again.stdout, again.stdout
    everything = cli(settings, "replay", path, "--pipeline", "replayed", *span, "--dry-run")
    assert "would request 100 run(s)" in everything.stdout, everything.stdout
    await wait_caught_up(settings, "control", settings.topics.control)
    assert len(completed(await read_all(settings, settings.topics.completions), "replayed")) == 100


def test_replay_and_backfill_refuse_what_they_cannot_do(settings: Settings, tmp_path: Path) -> None:
    (tmp_path / "replayed.yaml").write_text(REPLAYED)
    span = ("--from", "2026-01-01T00:00:00Z", "--to", "2026-01-01T01:00:00Z")
    missing = cli(settings, "replay", str(tmp_path), "--pipeline", "nope", *span)
    assert missing.returncode == 1 and "no pipeline 'nope'" in missing.stderr
    unscheduled = cli(settings, "backfill", "replayed", str(tmp_path), *span)
    assert unscheduled.returncode == 1 and "has no schedule" in unscheduled.stderr
    backwards = cli(
        settings,
        "replay",
        str(tmp_path),
        "--pipeline",
        "replayed",
        "--from",
        "2026-01-01T02:00:00Z",
        "--to",
        "2026-01-01T01:00:00Z",
    )
    assert backwards.returncode == 1 and "must be after --from" in backwards.stderr
    garbage = cli(
        settings, "replay", str(tmp_path), "--pipeline", "replayed", "--from", "soon", "--to", "now"
    )
    assert garbage.returncode == 2 and "is not a time" in garbage.stderr


async def test_backfill_runs_the_ticks_that_never_ran_once(
    settings: Settings, tmp_path: Path
) -> None:
    (tmp_path / "hourly.yaml").write_text(
        "name: hourly\nschedule: {cron: '0 * 1 1 *'}\n"  # hourly on 1 January only
        "tasks:\n  note: {python: 'replay_tasks:note'}\n"
    )
    (tmp_path / "replay_tasks.py").write_text(TASKS)
    span = ("--from", "2026-01-01T00:00:00Z", "--to", "2026-01-01T05:30:00Z")
    dry = cli(settings, "backfill", "hourly", str(tmp_path), *span, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert [
        line.split()[2] for line in dry.stdout.splitlines() if line.startswith("run  tick")
    ] == [f"2026-01-01T0{h}:00:00.000Z:" for h in range(6)]
    for _ in range(2):  # the second finds every tick requested: the run table refuses them
        real = cli(settings, "backfill", "hourly", str(tmp_path), *span)
        assert real.returncode == 0 and "requested 6 run(s)" in real.stdout, real.stdout
    process = HeadwaterProcess(["dev", str(tmp_path)], settings, tmp_path / "dev.log").start()
    try:
        await read_topic(
            settings, settings.topics.completions, lambda r: len(completed(r, "hourly")) >= 6
        )
        await wait_caught_up(settings, "control", settings.topics.control)
    finally:
        process.stop()
    done = completed(await read_all(settings, settings.topics.completions), "hourly")
    assert sorted(d["trigger"]["id"] for d in done) == [
        f"2026-01-01T0{h}:00:00.000Z" for h in range(6)
    ]
    after = cli(settings, "backfill", "hourly", str(tmp_path), *span, "--dry-run")
    assert "would request 0 run(s)" in after.stdout, after.stdout
