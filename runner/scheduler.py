"""The scheduler: tells each schedule's owner that its time has come. Thin loop.

Every process runs one. At start, and at each tick (plus its jitter) of every scheduled
pipeline, it writes a ``ScheduleDue`` control message keyed by the pipeline's schedule
key; the control partition that owns the schedule decides, from the state it keeps in
the run table, which ticks start a run (``flow.schedule.decide``). With N processes a
tick is told N times and starts one run: a tick already considered starts nothing, and
the tick's time is its run's identity. The message at start catches up on the ticks
missed while no process ran; one every ``LOOK_EVERY`` makes up for a lost one or a
clock that jumped. Each write is awaited: one Kafka refuses fails the loop, and the
supervisor restarts it (which tells every schedule again).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from headwater.runner.flow.backoff import pause
from headwater.runner.log import kafka
from headwater.runner.log.records import ScheduleDue, encode_control
from headwater.runner.model.pipeline import Pipeline
from headwater.runner.runs.flow import schedule_key
from headwater.runner.settings import Settings

log = logging.getLogger(__name__)

#: Seconds between looks at a schedule whose next tick is further away.
LOOK_EVERY = 60.0


class Scheduler:
    def __init__(
        self,
        settings: Settings,
        pipelines: Iterable[Pipeline],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._scheduled = [p for p in pipelines if p.schedule is not None]
        self._clock = clock

    async def run(self, stopping: asyncio.Event) -> None:
        if not self._scheduled:
            await stopping.wait()
            return
        producer = kafka.producer(self._settings)
        async with kafka.started(producer):
            now = self._clock()
            await self._tell(producer, self._scheduled, now)
            due = {p.name: self._next(p, now) for p in self._scheduled}
            while not stopping.is_set():
                wake = min(due.values())
                await pause(stopping, max(0.0, wake - self._clock()))
                now = self._clock()
                ready = [p for p in self._scheduled if due[p.name] <= now]
                await self._tell(producer, ready, now)
                for pipeline in ready:
                    due[pipeline.name] = self._next(pipeline, now)

    def _next(self, pipeline: Pipeline, now: float) -> float:
        """When to tell ``pipeline``'s schedule next: its next tick's start, or a look."""
        spec = pipeline.schedule
        assert spec is not None
        # A tick whose jittered start is still ahead may lie before ``now``: from a jitter back.
        for tick in spec.ticks(now - spec.jitter):
            at = spec.fire_at(pipeline.name, tick)
            if at > now:
                return min(at, now + LOOK_EVERY)
        raise AssertionError("a schedule's ticks never end")  # pragma: no cover

    async def _tell(self, producer: Any, pipelines: list[Pipeline], now: float) -> None:
        control = self._settings.topics.control
        sends = []
        for pipeline in pipelines:
            assert pipeline.schedule is not None
            due = ScheduleDue(pipeline.name, pipeline.schedule.id, now)
            key = schedule_key(pipeline.name)
            sends.append(await producer.send(control, encode_control(due), key=key))
        await kafka.all_acknowledged(sends, self._settings.kafka.write_timeout)
        log.debug("told %d schedule(s) the time", len(pipelines))
