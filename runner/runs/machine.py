"""The run state machine: a run is a fold over its control messages. Pure, no I/O.

``step`` takes the current run (or ``None``), one control message, the pipeline, the
time and a random number, and returns a ``Transition``: the new run and the effects to
carry out. What
must always hold:

- a run id is derived from pipeline + trigger event id, so a second ``RunRequested`` for
  the same id changes nothing and causes nothing (that is the trigger dedup);
- a ``TaskFinished`` counts only for the attempt currently dispatched; a replayed or late
  result changes nothing;
- a finished run never changes again, and ``Finish`` is emitted exactly once per run.

A task that fails after its last attempt fails the run; tasks that need it are skipped,
independent branches still finish, and the run ends when no task can make progress.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from headwater.runner.log.records import ControlMessage, RetryDue, RunRequested, TaskFinished
from headwater.runner.model.pipeline import Pipeline

TaskStatus = Literal[
    "pending", "dispatched", "retry_wait", "succeeded", "failed", "skipped", "cancelled"
]
RunStatus = Literal["running", "succeeded", "failed", "cancelled"]
_NAMESPACE = uuid.UUID("6f1a7c36-6a8e-4b0e-9a43-2d1f3c9b7e10")


def run_id_for(pipeline: str, event_id: str, event_source: str) -> str:
    """The run id of ``pipeline`` triggered by one event (CloudEvents: id + source): the
    UUID5 of their names, spelled out here because ``uuid.uuid5`` costs a tenth of the
    router's time per event (it builds a ``UUID`` object to print it)."""
    name = f"{pipeline}\x00{event_source}\x00{event_id}".encode()
    raw = bytearray(hashlib.sha1(_NAMESPACE.bytes + name, usedforsecurity=False).digest()[:16])
    raw[6] = (raw[6] & 0x0F) | 0x50  # version 5
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


# --- effects (what the shell must do) ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Dispatch:
    """Send ``task``'s request (attempt ``attempt``) to its route's workers."""

    task: str
    attempt: int


@dataclass(frozen=True, slots=True)
class ScheduleRetry:
    """Arm a timer: ``task`` is due again at ``at`` (a ``RetryDue`` then)."""

    task: str
    attempt: int
    at: float


@dataclass(frozen=True, slots=True)
class Finish:
    """The run ended: publish its completion."""

    status: RunStatus


Effect = Dispatch | ScheduleRetry | Finish


@dataclass(frozen=True, slots=True)
class Transition:
    """The outcome of one ``step``. ``applied`` is false when the message was a no-op
    (a duplicate trigger, a replayed result, a message for a finished run)."""

    run: Run | None
    effects: list[Effect] = field(default_factory=list)
    applied: bool = True


# --- state -----------------------------------------------------------------------------


@dataclass(slots=True)
class TaskRecord:
    status: TaskStatus = "pending"
    attempt: int = 0
    output: Any = None
    error: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    retry_at: float | None = None
    #: when a dispatched attempt counts as lost if no result came (a timer then fails it)
    deadline: float | None = None
    #: where its last attempt ran (route, region, instance), as its worker said
    ran_on: dict[str, Any] | None = None


@dataclass(slots=True)
class Run:
    run_id: str
    pipeline: str
    event: dict[str, Any]
    created_at: float
    status: RunStatus = "running"
    finished_at: float | None = None
    tasks: dict[str, TaskRecord] = field(default_factory=dict)
    #: its place in its group's queue while it waits for ``concurrency``/``throttle``
    queued: int | None = None

    def to_json(self) -> dict[str, Any]:
        # Field by field: ``asdict`` would deep-copy the event and outputs on every change.
        out = {name: getattr(self, name) for name in _RUN_FIELDS}
        out["tasks"] = {
            name: {field: getattr(record, field) for field in _TASK_FIELDS}
            for name, record in self.tasks.items()
        }
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Run:
        tasks = {name: TaskRecord(**record) for name, record in obj.pop("tasks").items()}
        return cls(**obj, tasks=tasks)

    def upstream_outputs(self, pipeline: Pipeline, task: str) -> dict[str, Any]:
        return {need: self.tasks[need].output for need in pipeline.task(task).needs}


_RUN_FIELDS = tuple(f.name for f in fields(Run) if f.name != "tasks")
_TASK_FIELDS = tuple(f.name for f in fields(TaskRecord))


def step(
    run: Run | None, message: ControlMessage, pipeline: Pipeline, now: float, rand: float
) -> Transition:
    """Apply one control message to ``run`` (mutated in place, or created)."""
    if run is not None and run.status == "running":
        changed = drift(run, pipeline)
        if changed is not None:  # the file changed under a run in flight: end it, say why
            return Transition(run, [fail(run, f"pipeline {run.pipeline!r} {changed}", now)])
    match message:
        case RunRequested() if run is None:
            run = new_run(message, pipeline, now)
            return Transition(run, begin(run, pipeline, now))
        case TaskFinished() if run is not None and run.status == "running":
            return _task_finished(run, message, pipeline, now, rand)
        case RetryDue() if run is not None and run.status == "running":
            record = run.tasks.get(message.task)
            if record is None or record.status != "retry_wait" or record.attempt != message.attempt:
                return Transition(run, applied=False)
            record.status, record.retry_at = "dispatched", None
            record.attempt += 1
            return Transition(run, [Dispatch(message.task, record.attempt)])
    return Transition(run, applied=False)


def _task_finished(
    run: Run, message: TaskFinished, pipeline: Pipeline, now: float, rand: float
) -> Transition:
    record = run.tasks.get(message.task)
    if record is None or record.status != "dispatched" or record.attempt != message.attempt:
        return Transition(run, applied=False)  # a replayed or late result: already counted
    if record.started_at is None:
        record.started_at = message.started_at
    record.finished_at = message.finished_at
    record.ran_on = message.ran_on
    if message.ok:
        record.status, record.output, record.error = "succeeded", message.output, None
        return Transition(run, _advance(run, pipeline, now))
    record.error = message.error
    task = pipeline.task(message.task)
    if record.attempt < task.max_attempts and not message.final:
        at = now + task.backoff.delay(record.attempt, rand)
        record.status, record.retry_at = "retry_wait", at
        return Transition(run, [ScheduleRetry(message.task, record.attempt, at)])
    record.status = "failed"
    return Transition(run, _advance(run, pipeline, now))


def new_run(message: RunRequested, pipeline: Pipeline, now: float) -> Run:
    """A requested run, none of its tasks started yet (``begin`` starts it)."""
    return Run(
        run_id=message.run_id,
        pipeline=message.pipeline,
        event=message.event,
        created_at=now,
        tasks={task.name: TaskRecord() for task in pipeline.tasks},
    )


def begin(run: Run, pipeline: Pipeline, now: float) -> list[Effect]:
    """Start ``run``: dispatch the tasks that need nothing."""
    return _advance(run, pipeline, now)


def drift(run: Run, pipeline: Pipeline) -> str | None:
    """How ``pipeline`` changed that ``run`` (started on an earlier version) cannot finish
    on, or ``None``. Tasks added since are not part of the run; a run whose unfinished
    task was removed, or whose task now needs one the run does not have, cannot go on."""
    names = {task.name for task in pipeline.tasks}
    for name, record in run.tasks.items():
        if name not in names and record.status in ("pending", "dispatched", "retry_wait"):
            return f"changed while this run was in flight: task {name!r} was removed"
    for task in pipeline.tasks:
        if task.name in run.tasks:
            missing = [need for need in task.needs if need not in run.tasks]
            if missing:
                return (
                    f"changed while this run was in flight: task {task.name!r} now needs "
                    f"{missing[0]!r}, which this run does not have"
                )
    return None


def fail(run: Run, why: str, now: float) -> Finish:
    """End ``run`` as failed: its unfinished tasks fail with ``why``."""
    for record in run.tasks.values():
        if record.status in ("pending", "dispatched", "retry_wait"):
            record.status, record.error, record.retry_at = "failed", why, None
    run.status, run.finished_at = "failed", now
    return Finish("failed")


def cancel(run: Run, why: str, now: float) -> tuple[Finish, list[str]]:
    """End ``run`` as cancelled: its unfinished tasks are ``cancelled`` with ``why``;
    returns the ``Finish`` and the tasks that had an attempt out (to be told to stop)."""
    stopped = [name for name, record in run.tasks.items() if record.status == "dispatched"]
    for record in run.tasks.values():
        if record.status in ("pending", "dispatched", "retry_wait"):
            record.status, record.error, record.retry_at = "cancelled", why, None
    run.status, run.finished_at = "cancelled", now
    return Finish("cancelled"), stopped


def _advance(run: Run, pipeline: Pipeline, now: float) -> list[Effect]:
    """Dispatch every task whose needs succeeded; skip those that can never run; finish.
    Tasks added to the pipeline after the run started are not part of it."""
    effects: list[Effect] = []
    for task in pipeline.tasks:  # topological order: a skip propagates in one pass
        record = run.tasks.get(task.name)
        if record is None or record.status != "pending":
            continue
        needs = [run.tasks[need].status for need in task.needs]
        if any(status in ("failed", "skipped") for status in needs):
            record.status = "skipped"
        elif all(status == "succeeded" for status in needs):
            record.status, record.attempt = "dispatched", 1
            effects.append(Dispatch(task.name, 1))
    statuses = [record.status for record in run.tasks.values()]
    if all(status in ("succeeded", "failed", "skipped") for status in statuses):
        run.status = "failed" if "failed" in statuses else "succeeded"
        run.finished_at = now
        effects.append(Finish(run.status))
    return effects
