"""One headwater process: the components it runs and how they start and stop.

``serve`` creates the log's topics and runs every component (event router, control
processor, one worker per route, one pump per source, the backpressure monitor that the
router and the pumps look at, each with Kafka clients of its own)
under a supervisor that restarts it with backoff after a failure. It returns once
``stopping`` is set and every component has finished its current batch.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Collection, Mapping, Sequence

from headwater.bridges.base import Source
from headwater.bridges.pump import Pump
from headwater.runner.alerts import Alerts
from headwater.runner.backpressure import Backpressure
from headwater.runner.cancels import Cancels
from headwater.runner.control import ControlProcessor
from headwater.runner.flow.backoff import RECONNECT, Retry, pause
from headwater.runner.flow.routes import RouteInfo
from headwater.runner.lineage import Lineage, LineageShipper
from headwater.runner.log import kafka
from headwater.runner.model.pipeline import Pipeline
from headwater.runner.observe.hooks import RunObserver
from headwater.runner.router import EventRouter
from headwater.runner.routing import Routing
from headwater.runner.scheduler import Scheduler
from headwater.runner.settings import Settings
from headwater.runner.supervise import Component, supervise
from headwater.runner.worker import Worker

log = logging.getLogger(__name__)
STOP_GRACE = 15.0


#: The roles a process can run: any number of processes of each join the same groups.
ROLES = ("bridges", "router", "control", "worker")


async def serve(
    settings: Settings,
    pipelines: Sequence[Pipeline],
    sources: Sequence[Source],
    observer: RunObserver,
    stopping: asyncio.Event,
    *,
    roles: Collection[str] = ROLES,
    routes: Collection[str] | None = None,
    declared: Mapping[str, RouteInfo] | None = None,
    failover_after: float = 10.0,
    heartbeat: float = 2.0,
) -> None:
    """Run ``roles`` (the router also runs the scheduler; a worker serves ``routes``,
    by default every route a pipeline names) until ``stopping`` is set. With routes
    ``declared`` (a config file's), workers announce themselves and fail over for the
    routes they are a fallback of (``routing``)."""
    named = {task.route for pipeline in pipelines for task in pipeline.tasks} | {"default"}
    served = set(named if routes is None else routes)
    await _until_kafka_answers(settings, named | served | set(declared or ()), stopping)
    if stopping.is_set():
        return
    by_name = {pipeline.name: pipeline for pipeline in pipelines}
    bridging = "bridges" in roles and bool(sources)
    routing = "router" in roles
    pressure = Backpressure(settings, named, router=routing, bridges=bridging)
    components: dict[str, Component] = {}
    if routing or bridging:
        components["backpressure"] = pressure.run
    if routing:
        components["router"] = EventRouter(settings, pipelines, pressure.router).run
        components["scheduler"] = Scheduler(settings, pipelines).run
        if settings.alert_webhook:
            alerts = Alerts(settings, settings.alert_webhook, settings.alert_every)
            components["alerts"] = alerts.run
    if "control" in roles:
        components["control"] = ControlProcessor(settings, by_name, observer).run
        if settings.lineage:  # opt-in: building the events costs the control role CPU
            components["lineage"] = Lineage(settings, by_name).run
            if settings.lineage_url is not None:
                shipper = LineageShipper(settings, settings.lineage_url, settings.lineage_api_key)
                components["lineage-http"] = shipper.run
    if "worker" in roles:
        cancels = Cancels(settings)  # one reader of hw.cancels for the process's workers
        components["cancels"] = cancels.run
        workers = {}
        for route in sorted(served):
            info = (declared or {}).get(route) or RouteInfo(route)
            workers[route] = Worker(settings, by_name, route, info=info, cancels=cancels)
            components[f"worker[{route}]"] = workers[route].run
        if declared is not None:
            components["routing"] = Routing(
                settings,
                by_name,
                declared,
                workers,
                failover_after=failover_after,
                heartbeat=heartbeat,
                cancels=cancels,
            ).run
    if bridging:
        for source in sources:
            components[f"bridge[{source.name}]"] = Pump(
                source,
                functools.partial(kafka.producer, settings),
                settings.topics,
                write_timeout=settings.kafka.write_timeout,
                valve=pressure.bridges,
                report=functools.partial(pressure.report, "bridge"),
            ).run
    tasks = [
        asyncio.create_task(supervise(name, run, stopping), name=name)
        for name, run in components.items()
    ]
    await stopping.wait()
    _, late = await asyncio.wait(tasks, timeout=STOP_GRACE)
    for task in late:
        log.warning("%s did not stop within %.0fs; cancelling", task.get_name(), STOP_GRACE)
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _until_kafka_answers(
    settings: Settings, routes: set[str], stopping: asyncio.Event
) -> None:
    retry = Retry(RECONNECT)
    while not stopping.is_set():
        try:
            await kafka.ensure_topics(settings, routes)
            return
        except Exception as exc:  # noqa: BLE001 - broker not there yet: wait for it
            delay = retry.failed()
            log.warning(
                "Kafka at %s not reachable (%s); retrying in %.0fs",
                settings.kafka.bootstrap,
                exc,
                delay,
            )
            await pause(stopping, delay)
