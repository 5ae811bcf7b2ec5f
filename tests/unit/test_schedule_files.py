"""Pipeline files with ``schedule:`` and pipelines triggered by other pipelines'
completions: what loads, and the exact problem lines of what does not."""

from __future__ import annotations

from pathlib import Path

import pytest

from headwater.runner.model.loader import load_pipeline, validate_paths
from headwater.runner.model.matching import triggered_by

TASKS = "tasks:\n  a: {python: 'm:a'}\n"


def write(folder: Path, name: str, body: str) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(f"name: {name}\n{body}{TASKS}")
    return path


def test_a_schedule_loads_with_its_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "hourly", 'schedule: {cron: "0 * * * *", timezone: Europe/Paris}\n')
    spec = load_pipeline(path).schedule
    assert spec is not None
    assert (spec.cron, spec.timezone, spec.catchup, spec.window, spec.overlap, spec.jitter) == (
        "0 * * * *",
        "Europe/Paris",
        "latest",
        86400.0,
        "allow",
        0.0,
    )
    full = write(
        tmp_path,
        "quarter",
        "schedule:\n  every: 15m\n  catchup: {window: 6h, policy: all}\n"
        "  overlap: buffer_one\n  jitter: 30s\n"
        "triggers:\n  - type: urgent.thing\n",
    )
    pipeline = load_pipeline(full)
    assert pipeline.schedule is not None and pipeline.triggers
    assert (pipeline.schedule.every, pipeline.schedule.window) == (900.0, 21600.0)
    # what decides the ticks names the schedule; the rest can change without a new one
    assert pipeline.schedule.id != load_pipeline(path).schedule.id  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("", ":1: <root>: needs triggers or a schedule (or both)"),
        ("triggers: []\n", ":2: triggers: is empty and there is no schedule"),
        ('schedule: {cron: "61 * * * *"}\n', ":2: schedule.cron: not a cron expression"),
        ("schedule: {cron: '* * *'}\n", ":2: schedule.cron: not a cron expression"),
        ("schedule: {}\n", ":2: schedule: needs either cron or every (not both)"),
        (
            "schedule: {every: 1m, cron: '* * * * *'}\n",
            ":2: schedule: needs either cron or every (not both)",
        ),
        (
            "schedule: {cron: '0 * * * *', timezone: Mars/Olympus}\n",
            ":2: schedule.timezone: unknown timezone 'Mars/Olympus'",
        ),
        ("schedule: {every: 1m, timezone: UTC}\n", ":2: schedule.timezone: applies to cron only"),
        ("schedule: {every: 100ms}\n", ":2: schedule.every: must be at least 1s"),
        ("schedule: {every: soon}\n", ":2: schedule.every:"),
        ("schedule: {every: 1m, jitter: 1m}\n", ":2: schedule.jitter: must be shorter"),
        ("schedule: {every: 1m, overlap: queue}\n", ":2: schedule.overlap: must be one of"),
        (
            "schedule: {every: 1m, catchup: {policy: some}}\n",
            ":2: schedule.catchup.policy: must be one of",
        ),
        ("schedule: {every: 1m, at: 5}\n", ":2: schedule"),
    ],
)
def test_schedule_problems_name_the_line_and_field(
    tmp_path: Path, body: str, expected: str
) -> None:
    path = write(tmp_path, "bad", body)
    problems = validate_paths([path])
    assert any(expected in line for line in problems), problems


def test_pipelines_triggered_by_each_other_in_a_cycle_are_refused_with_the_path(
    tmp_path: Path,
) -> None:
    upstream = "triggers:\n  - type: data.arrived\n  - type: headwater.run.succeeded\n"
    write(tmp_path, "a", upstream + "    subject: c\n")
    write(tmp_path, "b", "triggers:\n  - type: headwater.run.succeeded\n    subject: a\n")
    write(tmp_path, "c", "triggers:\n  - type: 'headwater.run.*'\n    subject: b\n")
    problems = validate_paths([tmp_path])
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{tmp_path / 'a.yaml'}:4: triggers.1: a cycle of pipelines")
    assert '"a" -> "b" -> "c" -> "a"' in problems[0]


def test_a_pipeline_on_every_failure_must_leave_out_its_own(tmp_path: Path) -> None:
    write(tmp_path, "alert", "triggers:\n  - type: headwater.run.failed\n")
    problems = validate_paths([tmp_path])
    assert len(problems) == 1 and '"alert" -> "alert"' in problems[0], problems
    write(
        tmp_path,
        "alert",
        "triggers:\n  - type: headwater.run.failed\n    data: {pipeline: {ne: alert}}\n",
    )
    assert validate_paths([tmp_path]) == []


def test_a_chain_without_a_cycle_loads(tmp_path: Path) -> None:
    write(tmp_path, "extract", "schedule: {every: 1h}\n")
    write(
        tmp_path,
        "report",
        "triggers:\n  - type: headwater.run.succeeded\n    subject: extract\n"
        "    data: {tasks.a.output.rows: {gt: 0}}\n",
    )
    assert validate_paths([tmp_path]) == []
    report = load_pipeline(tmp_path / "report.yaml")
    assert triggered_by(report.triggers[0], "extract")
    assert not triggered_by(report.triggers[0], "report")
