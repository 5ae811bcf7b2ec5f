"""Concurrency and throttle of a pipeline, end to end with real processes: the limits
hold as the tasks see them (their own start and end times), nothing is dropped, and a
SIGKILL of the process in the middle changes neither.

Each task appends ``start``/``end`` lines with its event's key and the time to a file,
and sleeps a little, so that runs of one key would overlap without the limit. Before
``concurrency:`` existed the file was refused (unknown field); with the limit raised to
the number of runs, the overlap check fails (checked once by hand).
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import pytest

from headwater.runner.settings import Settings
from tests.conftest import Start
from tests.kafkatools import by_trigger, publish, read_topic

pytestmark = pytest.mark.integration

TASKS = """\
import pathlib, time

HERE = pathlib.Path(__file__).parent

def work(ctx):
    with (HERE / "times").open("a") as out:
        out.write(f"start {ctx.event['subject']} {ctx.event['id']} {time.time()}\\n")
    time.sleep(ctx.params["sleep"])
    with (HERE / "times").open("a") as out:
        out.write(f"end {ctx.event['subject']} {ctx.event['id']} {time.time()}\\n")
    return {}
"""


def pipeline(limits: str, sleep: float) -> str:
    return (
        "name: limited\n"
        f"{limits}\n"
        "triggers:\n  - type: test.limited\n"
        f'tasks:\n  work: {{python: "limit_tasks:work", with: {{sleep: {sleep}}}}}\n'
    )


def intervals(times: Path, killed_at: float | None = None) -> dict[str, list[tuple[float, float]]]:
    """Per key, each task attempt's (start, end); an attempt the kill cut short ends then."""
    opened: dict[tuple[str, str], float] = {}
    out: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)
    for line in times.read_text().splitlines():
        kind, key, event, at = line.split()
        if kind == "start":
            if (key, event) in opened:  # started again after the kill: the first one died
                assert killed_at is not None, f"{event} started twice without a kill"
                out[key].append((opened.pop((key, event)), killed_at))
            opened[(key, event)] = float(at)
        else:
            out[key].append((opened.pop((key, event)), float(at)))
    for (key, _), start in opened.items():
        assert killed_at is not None and start < killed_at, f"an attempt never ended: {key}"
        out[key].append((start, killed_at))
    return out


def most_at_once(spans: list[tuple[float, float]]) -> int:
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = most = 0
    for _, step in edges:  # an end at the same instant as a start comes first
        running += step
        most = max(most, running)
    return most


async def publish_keyed(settings: Settings, keys: int, per_key: int) -> list[str]:
    ids = []
    for k in range(keys):
        batch = [f"c{k}-{n}" for n in range(per_key)]
        await publish(settings, "test.limited", batch, subject=f"c{k}")
        ids += batch
    return ids


def completed(records: list[Any], ids: list[str]) -> bool:
    return set(ids) <= set(by_trigger(records))


async def check_all_once(settings: Settings, ids: list[str]) -> None:
    records = await read_topic(
        settings, settings.topics.completions, lambda rs: completed(rs, ids), within=120
    )
    found = by_trigger(records)
    assert {event: found[event] for event in ids} == {
        event: ["headwater.run.succeeded"] for event in ids
    }
    assert len(records) == len(ids), "a run completed twice"


@pytest.mark.timeout(240)
async def test_concurrency_per_key_holds_as_the_tasks_see_it(
    settings: Settings, headwater_dev: Start
) -> None:
    files = {
        "limited.yaml": pipeline("concurrency: {limit: 2, key: subject}", 0.2),
        "limit_tasks.py": TASKS,
    }
    runner = headwater_dev(files, env={"HEADWATER_WORKER_CONCURRENCY": "16"})
    await runner.output_shows("headwater dev:")
    ids = await publish_keyed(settings, keys=5, per_key=10)
    await check_all_once(settings, ids)
    spans = intervals(runner.log.parent / "pipelines" / "times")
    assert sorted(spans) == [f"c{k}" for k in range(5)]
    peaks = {key: most_at_once(s) for key, s in spans.items()}
    assert all(peak <= 2 for peak in peaks.values()), peaks
    assert max(peaks.values()) == 2, f"the limit was never reached: {peaks}"


@pytest.mark.timeout(300)
async def test_concurrency_holds_across_a_sigkill(settings: Settings, headwater_dev: Start) -> None:
    files = {
        "limited.yaml": pipeline("concurrency: {limit: 2, key: subject}", 0.5),
        "limit_tasks.py": TASKS,
    }
    env = {"HEADWATER_WORKER_CONCURRENCY": "16"}
    runner = headwater_dev(files, env=env)
    await runner.output_shows("headwater dev:")
    ids = await publish_keyed(settings, keys=5, per_key=10)
    await read_topic(settings, settings.topics.completions, lambda rs: len(rs) >= 12, within=90)
    runner.kill()
    import time

    killed_at = time.time()
    headwater_dev({}, env=env)  # the same folder: the same pipeline and task file
    await check_all_once(settings, ids)
    spans = intervals(runner.log.parent / "pipelines" / "times", killed_at)
    peaks = {key: most_at_once(s) for key, s in spans.items()}
    times = (runner.log.parent / "pipelines" / "times").read_text()
    assert all(peak <= 2 for peak in peaks.values()), (peaks, killed_at, times)


@pytest.mark.timeout(240)
async def test_throttle_spaces_the_starts_and_drops_nothing(
    settings: Settings, headwater_dev: Start
) -> None:
    limit, period = 3, 2.0
    files = {
        "limited.yaml": pipeline(f"throttle: {{limit: {limit}, period: {period}s}}", 0.05),
        "limit_tasks.py": TASKS,
    }
    runner = headwater_dev(files)
    await runner.output_shows("headwater dev:")
    ids = await publish_keyed(settings, keys=1, per_key=12)
    await check_all_once(settings, ids)
    starts = sorted(
        start
        for s in intervals(runner.log.parent / "pipelines" / "times").values()
        for start, _ in s
    )
    assert len(starts) == 12
    for i in range(len(starts) - limit):
        assert starts[i + limit] - starts[i] >= period, (
            f"{limit + 1} starts within {period}s: {starts[i : i + limit + 1]}"
        )
    assert starts[-1] - starts[0] >= 3 * period  # 12 starts at 3 per period: 4 periods
