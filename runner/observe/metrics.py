"""The control processor's committed changes as Prometheus metrics (``runner.metrics``)."""

from __future__ import annotations

import time

from headwater.runner.metrics import (
    RUNS_FINISHED,
    RUNS_STARTED,
    TASK_RETRIES,
    TRIGGER_LATENCY,
    epoch,
)
from headwater.runner.observe.hooks import RunObserver
from headwater.runner.runs.machine import Run, TaskRecord


class MetricsObserver(RunObserver):
    """The control processor's committed changes, as metrics."""

    def run_started(self, run: Run) -> None:
        RUNS_STARTED.labels(run.pipeline).inc()
        at = epoch(run.event.get("time"))
        if at is not None:
            TRIGGER_LATENCY.labels(run.pipeline).observe(max(0.0, time.time() - at))

    def task_finished(self, run: Run, task: str, record: TaskRecord) -> None:
        if record.status == "retry_wait":  # a retry is scheduled
            TASK_RETRIES.labels(run.pipeline, task).inc()

    def run_finished(self, run: Run) -> None:
        RUNS_FINISHED.labels(run.pipeline, run.status).inc()
