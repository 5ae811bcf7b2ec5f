"""Routing: heartbeats of this process's routes, and failover to a route that is down.

Each process with workers announces every route it serves on ``hw.heartbeats`` every
``heartbeat`` seconds (route, region, residency, instance, free capacity), and listens
to everyone's. When a route has been silent for ``failover_after`` and one of this
process's routes is the first alive route of its ``fallback`` list (``flow.routes``),
this process starts a worker on the down route's requests — it joins that route's
consumer group, so the requests already waiting and those dispatched later run here,
each with its own offsets and the run table's exactly-once — and stops it as soon as the
route is heard again. Every change is a CloudEvent on ``hw.status``
(``headwater.route.down`` naming the route serving it or that none may, and
``headwater.route.up``) and a log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from headwater.runner.cancels import Cancels
from headwater.runner.envelope import to_kafka
from headwater.runner.flow.gate import Change
from headwater.runner.flow.routes import RouteInfo, RouteMap
from headwater.runner.log import kafka
from headwater.runner.model.pipeline import Pipeline
from headwater.runner.observe.status import status_event
from headwater.runner.settings import Settings
from headwater.runner.supervise import supervise
from headwater.runner.worker import Worker

log = logging.getLogger(__name__)

#: Seconds of heartbeats read back when the watcher starts.
LOOK_BACK = 60.0


class Routing:
    def __init__(
        self,
        settings: Settings,
        pipelines: Mapping[str, Pipeline],
        routes: Mapping[str, RouteInfo],
        mine: Mapping[str, Worker],
        *,
        failover_after: float,
        heartbeat: float,
        clock: Callable[[], float] = time.time,
        cancels: Cancels | None = None,
    ) -> None:
        self._settings = settings
        self._pipelines = pipelines
        self._routes = routes
        self._mine = mine  # this process's own routes and their workers
        self._failover_after = failover_after
        self._heartbeat = heartbeat
        self._clock = clock
        self._cancels = cancels
        self._map = RouteMap.of(routes.values(), failover_after, clock())
        self._serving: dict[str, tuple[asyncio.Event, asyncio.Task[None]]] = {}
        self._down: dict[str, str | None] = {}

    async def run(self, stopping: asyncio.Event) -> None:
        producer = kafka.producer(self._settings)
        reader = kafka.consumer(self._settings, group=None, auto_offset_reset="latest")
        self._map = RouteMap.of(self._routes.values(), self._failover_after, self._clock())
        async with kafka.started(producer, reader):
            since = self._clock() - LOOK_BACK  # the heartbeats of the last minute first
            await kafka.follow_from(reader, self._settings.topics.heartbeats, since)
            try:
                while not stopping.is_set():
                    await self._announce(producer)
                    await self._listen(reader, stopping)
                    await self._follow(producer)
            finally:
                await self._stop_serving(list(self._serving))

    async def _announce(self, producer: Any) -> None:
        sends = []
        for route, worker in self._mine.items():
            info = self._routes.get(route) or RouteInfo(route)
            beat = {
                "route": route,
                "region": info.region,
                "residency": info.residency,
                "instance": self._settings.instance,
                "free": max(0, self._settings.worker_concurrency - worker.running),
                "at": self._clock(),
            }
            topic = self._settings.topics.heartbeats
            sends.append(await producer.send(topic, orjson.dumps(beat), key=route.encode()))
        await kafka.all_acknowledged(sends, self._settings.kafka.write_timeout)

    async def _listen(self, reader: Any, stopping: asyncio.Event) -> None:
        deadline = time.monotonic() + self._heartbeat
        while not stopping.is_set() and time.monotonic() < deadline:
            wait = max(1, int((deadline - time.monotonic()) * 1000))
            batch = await reader.getmany(timeout_ms=min(wait, 500))
            for records in batch.values():
                for record in records:
                    self._heard(record.value)

    def _heard(self, value: bytes | None) -> None:
        with contextlib.suppress(Exception):  # a garbled heartbeat is no heartbeat
            beat = orjson.loads(value or b"")
            self._map.seen(str(beat["route"]), str(beat["instance"]), float(beat["at"]))

    async def _follow(self, producer: Any) -> None:
        """Start serving the down routes this process is the fallback for; stop serving
        those heard again; say every change."""
        now = self._clock()
        wanted = self._map.served_by(self._mine, now)
        for route in sorted(wanted - set(self._serving)):
            self._start_serving(route, self._map.server(route, now))
        await self._stop_serving(sorted(set(self._serving) - wanted))
        down = self._map.down(now)
        changes = []
        for route, server in down.items():
            if self._down.get(route, "up") != server:
                last = self._map.last_heard(route)
                data = {
                    "route": route,
                    "served_by": server,
                    "last_heartbeat": last,
                    "reason": f"no heartbeat for {self._failover_after:g}s"
                    + (
                        f"; its tasks run on route {server}"
                        if server
                        else "; no fallback route that may run its tasks is alive: they wait"
                    ),
                }
                changes.append(Change("route.down", f"route {route}", data))
        for route in set(self._down) - set(down):
            changes.append(Change("route.up", f"route {route}", {"route": route}))
        self._down = down
        sends = []
        for change in changes:
            log.warning("%s: %s %s", change.scope, change.kind, change.data.get("reason", ""))
            headers, value = to_kafka(status_event(change, self._settings.instance, "routing"))
            topic = self._settings.topics.status
            sends.append(
                await producer.send(topic, value, headers=headers, key=change.scope.encode())
            )
        await kafka.all_acknowledged(sends, self._settings.kafka.write_timeout)

    def _start_serving(self, route: str, server: str | None) -> None:
        info = self._routes.get(server or "") or RouteInfo(server or route)
        worker = Worker(self._settings, self._pipelines, route, info=info, cancels=self._cancels)
        stop = asyncio.Event()
        task = asyncio.create_task(supervise(f"worker[{route} for {info.name}]", worker.run, stop))
        self._serving[route] = (stop, task)
        log.warning("route %s is down: route %s serves its tasks here", route, info.name)

    async def _stop_serving(self, routes: list[str]) -> None:
        for route in routes:
            stop, task = self._serving.pop(route)
            stop.set()
            with contextlib.suppress(Exception):
                await task
            log.warning("route %s is back: its tasks run on its own workers again", route)
