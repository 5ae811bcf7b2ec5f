"""The batched-runs row: a backlog of events through a pipeline whose trigger batches them
(``max_events: 1000, max_wait: 1s``), so the router, the batching windows and a few runs
per second carry the stream instead of one run per event.

Timed like the runs row, from the first run's start to the last run's end, and counted in
events: the sum of the ``count`` of every finished batch run.
"""

from __future__ import annotations

import time
from typing import Any

from bench.kafkatools import ensure_log_topics, fill_events
from bench.stages import serve_until
from headwater.runner.model.pipeline import Batching, Pipeline, Task, Trigger
from headwater.runner.observe.hooks import RunObserver
from headwater.runner.settings import Settings

WINDOW = Batching(max_events=1000, max_wait=1.0)


def batched_pipeline(target: str = "bench.tasks:noop") -> Pipeline:
    trigger = Trigger("bench.reading", batch=WINDOW)
    return Pipeline("batched", (trigger,), (Task("t", "python", target),))


class _Events(RunObserver):
    def __init__(self) -> None:
        self.first_started = self.last_finished = 0.0
        self.events = self.runs = 0

    def run_started(self, run: Any) -> None:
        self.first_started = self.first_started or time.perf_counter()

    def run_finished(self, run: Any) -> None:
        self.events += run_events(run)
        self.runs += 1
        self.last_finished = time.perf_counter()


def run_events(run: Any) -> int:
    """How many events a finished run carried (its marker keeps no event: count it at
    finish, while the run still holds it)."""
    data = run.event.get("data") or {}
    return int(data.get("count", 1))


async def batched_runs(settings: Settings, count: int) -> tuple[float, int]:
    """Events/s through the batching pipeline, and how many runs carried them."""
    await ensure_log_topics(settings, {"default"})
    await fill_events(settings, count)
    observer = _Events()
    await serve_until(settings, batched_pipeline(), observer, lambda: observer.events >= count)
    return count / (observer.last_finished - observer.first_started), observer.runs
