"""The control processor's committed changes as Prometheus metrics (``runner.metrics``)."""

from __future__ import annotations

import time

from headwater.runner.metrics import (
    EGRESS_BYTES,
    EGRESS_COST,
    RUNS_FINISHED,
    RUNS_STARTED,
    TASK_RETRIES,
    TRIGGER_LATENCY,
    epoch,
)
from headwater.runner.observe.hooks import RunObserver
from headwater.runner.runs.egress import egress
from headwater.runner.runs.machine import Run, TaskRecord


class MetricsObserver(RunObserver):
    """The control processor's committed changes, as metrics; ``prices`` (USD per GB by
    source cloud) turn the egress of finished runs into an estimated cost."""

    def __init__(self, prices: dict[str, float] | None = None) -> None:
        self._prices = prices or {}

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
        if not run.event.get("data"):
            return  # about no object: nothing to count (the common case, kept cheap)
        tasks = {n: {"attempts": r.attempt, "ran_on": r.ran_on} for n, r in run.tasks.items()}
        moved = egress(run.event, tasks, self._prices)
        if moved is None:
            return
        source = moved["from"]["cloud"]
        for move in moved["moves"]:
            to = move["to"]
            labels = (run.pipeline, source, to["route"] or "", to["region"] or "")
            EGRESS_BYTES.labels(*labels).inc(move["bytes"])
            if move["cost_usd"] is not None:
                EGRESS_COST.labels(*labels).inc(move["cost_usd"])
