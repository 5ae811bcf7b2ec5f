"""Prometheus metrics of one process: ``--metrics HOST:PORT`` serves ``/metrics``
(``observe.metrics`` feeds the run hooks' series).

Names follow Prometheus conventions (``headwater_`` prefix, units in the name, counters
ending in ``_total``); labels are bounded sets — source, cloud, pipeline, task, route,
status, group, topic, partition, component — never run ids or event ids. Recording is a
dictionary lookup and an add: cheap enough for the hot paths (``make bench`` measures
the rows that record).

Where each series comes from: bridges (events and bytes in, last event seen per source),
the router (events routed, runs requested), the control processor's observer hook
(runs started and finished, trigger latency, retries, task durations), workers (task
attempts by outcome), every DLQ write (by component), the backpressure monitor (consumer
lag per group and partition, paused consumers), breakers and health (their states).
"""

from __future__ import annotations

import calendar
from datetime import datetime
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600)
_DURATION_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800, 3600)

EVENTS_IN = Counter(
    "headwater_source_events_total",
    "Events bridged into the log, per source and cloud.",
    ["source", "cloud"],
)
BYTES_IN = Counter(
    "headwater_source_bytes_total",
    "Bytes of event payload bridged into the log, per source and cloud.",
    ["source", "cloud"],
)
LAST_EVENT = Gauge(
    "headwater_source_last_event_timestamp_seconds",
    "When a source last delivered an event (Unix time): its liveness.",
    ["source"],
)
EGRESS_BYTES = Counter(
    "headwater_egress_bytes_total",
    "Bytes of trigger objects tasks read outside the object's cloud or region, per pipeline, "
    "source cloud and the route and region they ran in.",
    ["pipeline", "source_cloud", "route", "region"],
)
EGRESS_COST = Counter(
    "headwater_egress_cost_usd_total",
    "Estimated cost of that egress in US dollars (the config's egress price table).",
    ["pipeline", "source_cloud", "route", "region"],
)
EVENTS_ROUTED = Counter(
    "headwater_router_events_total", "Events the router read from the log, per topic.", ["topic"]
)
RUNS_REQUESTED = Counter(
    "headwater_router_run_requests_total",
    "Run requests the router wrote, per pipeline.",
    ["pipeline"],
)
RUNS_STARTED = Counter("headwater_runs_started_total", "Runs started, per pipeline.", ["pipeline"])
RUNS_FINISHED = Counter(
    "headwater_runs_finished_total",
    "Runs finished, per pipeline and status.",
    ["pipeline", "status"],
)
TRIGGER_LATENCY = Histogram(
    "headwater_trigger_latency_seconds",
    "From the trigger event's time to its run's start, per pipeline.",
    ["pipeline"],
    buckets=_LATENCY_BUCKETS,
)
TASK_DURATION = Histogram(
    "headwater_task_duration_seconds",
    "Duration of task attempts, per pipeline, task and outcome.",
    ["pipeline", "task", "outcome"],
    buckets=_DURATION_BUCKETS,
)
TASK_RETRIES = Counter(
    "headwater_task_retries_total",
    "Task attempts after the first, per pipeline and task.",
    ["pipeline", "task"],
)
DLQ_RECORDS = Counter(
    "headwater_dlq_records_total", "Records written to the DLQ, per component.", ["component"]
)
CONSUMER_LAG = Gauge(
    "headwater_consumer_lag_records",
    "Records not yet consumed, per consumer group, topic and partition.",
    ["group", "topic", "partition"],
)
PAUSED = Gauge(
    "headwater_flow_paused", "1 while a consumer is paused by backpressure.", ["consumer"]
)
BREAKER_OPEN = Gauge(
    "headwater_breaker_open", "1 while a circuit breaker is open or half-open.", ["scope"]
)
SERVICE_HEALTHY = Gauge(
    "headwater_service_healthy", "1 while a needed service answers its probe.", ["service"]
)


def serve(address: str) -> None:
    """Serve ``/metrics`` on ``HOST:PORT`` (a thread of prometheus-client's)."""
    host, _, port = address.rpartition(":")
    start_http_server(int(port), addr=host or "0.0.0.0")


def flow_change(kind: str, scope: str) -> None:
    """A transition published on ``hw.status``, as a gauge."""
    if kind in ("flow.paused", "flow.resumed"):
        PAUSED.labels(scope).set(1 if kind == "flow.paused" else 0)
    elif kind.startswith("breaker."):
        BREAKER_OPEN.labels(scope).set(0 if kind == "breaker.closed" else 1)
    elif kind in ("service.unhealthy", "service.healthy"):
        SERVICE_HEALTHY.labels(scope).set(1 if kind == "service.healthy" else 0)


def epoch(text: Any) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        return calendar.timegm(when.timetuple()) + when.microsecond / 1e6
    return when.timestamp()
