"""Observers: cross-cutting behaviour (progress output, metrics, lineage) as hooks.

The control processor calls these after the state change they report was committed to
Kafka, so an observer never reports something that a crash could undo. Observers must be
quick and must not raise; a failing observer is logged and skipped.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import orjson

from headwater.runner.envelope import now_iso
from headwater.runner.runs.machine import Run, TaskRecord
from headwater.runner.runs.table import Note
from headwater.runner.secrets import redact

log = logging.getLogger(__name__)


class RunObserver:
    """Base class with no-op hooks; override what you need."""

    def run_started(self, run: Run) -> None: ...

    def task_finished(self, run: Run, task: str, record: TaskRecord) -> None: ...

    def run_finished(self, run: Run) -> None: ...


class Observers(RunObserver):
    """Fans each hook out to several observers, isolating their failures."""

    def __init__(self, observers: list[RunObserver]) -> None:
        self._observers = observers

    def run_started(self, run: Run) -> None:
        for observer in self._observers:
            _safely(observer.run_started, run)

    def task_finished(self, run: Run, task: str, record: TaskRecord) -> None:
        for observer in self._observers:
            _safely(observer.task_finished, run, task, record)

    def run_finished(self, run: Run) -> None:
        for observer in self._observers:
            _safely(observer.run_finished, run)


def tell(observer: RunObserver, note: Note) -> None:
    """Call the hook a committed change asked for."""
    if note.hook == "started":
        observer.run_started(note.run)
    elif note.hook == "finished":
        observer.run_finished(note.run)
    elif note.record is not None:
        observer.task_finished(note.run, note.task, note.record)


def _safely(hook: object, *args: object) -> None:
    try:
        hook(*args)  # type: ignore[operator]
    except Exception:
        log.exception("observer %r failed", hook)


class ConsoleProgress(RunObserver):
    """Prints one line per run start, task outcome and run end (for ``headwater dev``)."""

    def __init__(self, stream: TextIO = sys.stdout, json: bool = False) -> None:
        self._stream = stream
        self._json = json

    def _say(self, run: Run, text: str, event: str, **fields: Any) -> None:
        if self._json:  # one structured line: what happened, to which run and task
            line = orjson.dumps(
                {
                    "time": now_iso(),
                    "event": event,
                    "run_id": run.run_id,
                    "pipeline": run.pipeline,
                    **fields,
                    "message": text,
                },
                default=str,
            ).decode()
            line = redact(line)
        else:
            line = redact(f"run {run.run_id[:8]} {run.pipeline}: {text}")
        print(line, file=self._stream, flush=True)

    def run_started(self, run: Run) -> None:
        event = run.event
        trigger = f"{event.get('type')} {event.get('subject') or event.get('id')}"
        self._say(run, f"started by {trigger}", "run.started", trigger_id=event.get("id"))

    def task_finished(self, run: Run, task: str, record: TaskRecord) -> None:
        took = _millis(record.started_at, record.finished_at)
        fields = {"task": task, "attempt": record.attempt, "status": record.status}
        if record.status == "succeeded":
            self._say(run, f"task {task} succeeded in {took}", "task.attempt", **fields)
        elif record.status == "retry_wait":
            text = f"task {task} attempt {record.attempt} failed: {record.error}; retrying"
            self._say(run, text, "task.attempt", **fields, error=record.error)
        else:
            text = f"task {task} {record.status} after {record.attempt} attempt(s): {record.error}"
            self._say(run, text, "task.attempt", **fields, error=record.error)

    def run_finished(self, run: Run) -> None:
        took = _millis(run.created_at, run.finished_at)
        self._say(run, f"{run.status} in {took}", "run.finished", status=run.status)


def _millis(start: float | None, end: float | None) -> str:
    if start is None or end is None:
        return "?"
    return f"{(end - start) * 1000:.0f} ms"


class JsonFormatter(logging.Formatter):
    """Log records as one JSON object per line (``--log-format json``)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": now_iso(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return redact(orjson.dumps(line).decode())
