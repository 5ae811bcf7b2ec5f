"""The completion event: one CloudEvent per finished run, on the ``completions`` topic.

Its ``id`` is the run id, so a subscriber can deduplicate on it; the Kafka key is the
pipeline name, so one pipeline's completions keep their order. Pure.
"""

from __future__ import annotations

from typing import Any

from headwater.runner.envelope import CloudEvent, epoch_iso
from headwater.runner.model.matching import COMPLETION_SOURCE_PREFIX
from headwater.runner.runs.egress import egress
from headwater.runner.runs.machine import Run, TaskRecord

SOURCE_PREFIX = COMPLETION_SOURCE_PREFIX


def completion_event(run: Run, prices: dict[str, float] | None = None) -> CloudEvent:
    """``headwater.run.succeeded``, ``.failed`` or ``.cancelled`` for a finished run; its
    ``egress`` is priced with ``prices`` (USD per GB, by source cloud)."""
    assert run.finished_at is not None, "only a finished run has a completion"
    trigger = run.event
    tasks = {name: _task_summary(record) for name, record in run.tasks.items()}
    data: dict[str, Any] = {
        "run_id": run.run_id,
        "pipeline": run.pipeline,
        "status": run.status,
        "trigger": {k: trigger.get(k) for k in ("id", "source", "type", "subject")},
        "started_at": epoch_iso(run.created_at),
        "finished_at": epoch_iso(run.finished_at),
        "duration_ms": round((run.finished_at - run.created_at) * 1000, 3),
        "tasks": tasks,
    }
    moved = egress(trigger, tasks, prices or {})
    if moved is not None:  # the trigger is about an object: what the tasks moved of it
        data["egress"] = moved
    failed = [name for name, record in run.tasks.items() if record.status == "failed"]
    if failed:
        data["error"] = "; ".join(f"task {n} failed: {run.tasks[n].error}" for n in failed)
    elif run.status == "cancelled":
        why = next((r.error for r in run.tasks.values() if r.status == "cancelled"), None)
        data["error"] = why or "cancelled"
    return CloudEvent(
        id=run.run_id,
        source=SOURCE_PREFIX + run.pipeline,
        type=f"headwater.run.{run.status}",
        subject=run.pipeline,
        time=epoch_iso(run.finished_at),
        data=data,
    )


def _task_summary(record: TaskRecord) -> dict[str, Any]:
    duration = None
    if record.started_at is not None and record.finished_at is not None:
        duration = round((record.finished_at - record.started_at) * 1000, 3)
    return {
        "status": record.status,
        "attempts": record.attempt,
        "output": record.output,
        "error": record.error,
        "duration_ms": duration,
        "ran_on": record.ran_on,
    }
