"""Backpressure across the log: the router stops routing while the work downstream of it
passes its bounds, and the bridges stop pulling while the events waiting for the router
do, so a flood stays where it came from (the source, then ``events``), never in memory.

Every ``INTERVAL`` this component reads the consumer groups' lag (``log.lag``) and feeds
two valves (``flow.pressure``) that the router and the pumps look at before they take
more:

- **router**: the control messages not yet applied plus the runs in progress (the control
  processor commits their number with its offsets), over all control partitions, against
  ``HEADWATER_MAX_PENDING_RUNS``; and per route, the task requests its workers have not
  done, against ``HEADWATER_MAX_PENDING_TASKS``;
- **bridges**: the events the router group has not routed, against
  ``HEADWATER_MAX_EVENTS_LAG``.

A valve that closes opens again once every reading is at half its bound. A reading that
fails (the broker away) changes nothing; the valves start open. What must hold: every
transition of this process's valves, and every source outage its bridges report
(``report``), is a CloudEvent on ``hw.status`` and a log line, written and acknowledged:
a change is dropped only once Kafka acknowledged it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

from headwater.runner import metrics
from headwater.runner.envelope import to_kafka
from headwater.runner.flow.backoff import pause
from headwater.runner.flow.gate import Change
from headwater.runner.flow.pressure import EVENTS_NOT_ROUTED, PENDING_RUNS, Valve
from headwater.runner.log import kafka
from headwater.runner.log.lag import LagReader, runs_in
from headwater.runner.observe.status import status_event
from headwater.runner.settings import Settings

log = logging.getLogger(__name__)

#: Seconds between looks at the lags.
INTERVAL = 1.0
#: A look that takes longer than this is given up (the valves keep their state).
READ_WITHIN = 10.0
#: A failing look is logged at most this often.
COMPLAIN_EVERY = 60.0


class Backpressure:
    def __init__(
        self, settings: Settings, routes: Iterable[str], *, router: bool, bridges: bool
    ) -> None:
        self._settings = settings
        topics, bounds = settings.topics, settings.bounds
        self._wanted: list[tuple[str, str]] = []  # (group, topic) whose lag is read
        limits: dict[str, int] = {}
        if router and bounds.pending_runs:
            self._wanted.append((topics.group("control"), topics.control))
            limits[PENDING_RUNS] = bounds.pending_runs
        for route in sorted(routes) if router and bounds.pending_tasks else ():
            self._wanted.append((topics.group(f"workers.{route}"), topics.tasks(route)))
            limits[_tasks(topics.tasks(route))] = bounds.pending_tasks
        if bridges and bounds.events_lag:
            self._wanted.append((topics.group("router"), topics.events))
        instance = settings.instance
        self.router = Valve("router", topics.events, limits, instance=instance)
        self.bridges = Valve(
            "bridges",
            topics.events,
            {EVENTS_NOT_ROUTED: bounds.events_lag} if bounds.events_lag else {},
            instance=instance,
        )
        self._reported: list[tuple[str, Change]] = []
        self._complained = 0.0

    def report(self, role: str, change: Change) -> None:
        """A transition another component of this process saw (a bridge's source going
        away and coming back), published with the valves' own."""
        self._reported.append((role, change))

    async def run(self, stopping: asyncio.Event) -> None:
        producer = kafka.producer(self._settings)
        async with kafka.started(producer), LagReader(self._settings) as reader:
            writer = kafka.BatchWriter(producer)
            while not stopping.is_set():
                await self._look(reader)
                await self._publish(writer)
                await pause(stopping, INTERVAL)
            await self._publish(writer)  # what the last look changed

    async def _look(self, reader: LagReader) -> None:
        try:
            router, bridges = await asyncio.wait_for(self._readings(reader), READ_WITHIN)
        except Exception as exc:  # noqa: BLE001 - the valves keep their state meanwhile
            if time.monotonic() - self._complained >= COMPLAIN_EVERY:
                self._complained = time.monotonic()
                log.warning("backpressure: cannot read the consumer lags (%r)", exc)
            return
        self.router.observe(router)
        self.bridges.observe(bridges)

    async def _readings(self, reader: LagReader) -> tuple[dict[str, int], dict[str, int]]:
        topics = self._settings.topics
        router: dict[str, int] = {}
        bridges: dict[str, int] = {}
        for (group, topic), partitions in (await reader.read(self._wanted)).items():
            for partition, lag in partitions.items():
                metrics.CONSUMER_LAG.labels(group, topic, str(partition)).set(lag.lag)
            pending = sum(p.lag for p in partitions.values())
            if topic == topics.control:
                router[PENDING_RUNS] = pending + sum(
                    runs_in(p.metadata) for p in partitions.values()
                )
            elif topic == topics.events:
                bridges[EVENTS_NOT_ROUTED] = pending
            else:
                router[_tasks(topic)] = pending
        return router, bridges

    async def _publish(self, writer: kafka.BatchWriter) -> None:
        changes = [
            *self._reported,
            *(("router", c) for c in self.router.changes()),
            *(("bridge", c) for c in self.bridges.changes()),
        ]
        if not changes:
            return
        instance, topic = self._settings.instance, self._settings.topics.status
        for role, change in changes:
            log.warning("%s: %s %s", change.scope, change.kind, change.data.get("reason") or "")
            headers, value = to_kafka(status_event(change, instance, role))
            await writer.add(topic, value, key=change.scope.encode(), headers=headers)
        self._reported = []
        try:
            futures = await writer.flush()
            await kafka.all_acknowledged(futures, self._settings.kafka.write_timeout)
        except BaseException:
            # Kept to be written again by the restarted component (a status event twice
            # is harmless: each carries the state it reports).
            self._reported = [*changes, *self._reported]
            raise


def _tasks(topic: str) -> str:
    return f"task requests not done ({topic})"
