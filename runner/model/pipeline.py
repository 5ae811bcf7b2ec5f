"""The pipeline model: what a validated pipeline file becomes.

Instances are immutable and already checked (by ``headwater.runner.model.loader``): task names
are unique, ``needs`` name existing tasks, and the tasks form a DAG. ``tasks`` is kept in a
topological order, so "ready" tasks are found by a single pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

# Re-exported: a task's retry schedule and the durations a pipeline file writes.
from headwater.runner.durations import parse_duration as parse_duration
from headwater.runner.flow.backoff import Backoff as Backoff
from headwater.runner.flow.breaker import BreakerSpec as BreakerSpec
from headwater.runner.flow.schedule import ScheduleSpec as ScheduleSpec

COMPARISONS = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "glob", "exists")
Comparison = Literal["eq", "ne", "gt", "gte", "lt", "lte", "in", "glob", "exists"]


@dataclass(frozen=True, slots=True)
class Condition:
    """``data.<path> <op> <value>``, e.g. ``size gt 0`` or ``bucket eq "incoming"``."""

    path: tuple[str, ...]
    op: Comparison
    value: Any


@dataclass(frozen=True, slots=True)
class Batching:
    """One run for many events. A window opens at its first event and closes after
    ``max_events`` events, ``max_wait`` seconds after it opened, or ``quiet_for`` seconds
    without a new event (debounce), whichever comes first; the loader requires ``max_wait``
    or ``quiet_for``, so every window closes. ``key`` (``subject``, ``source``, ``type`` or
    ``data.<path>``) keeps one window per value of that field."""

    max_events: int | None = None
    max_wait: float | None = None
    quiet_for: float | None = None
    key: str | None = None


@dataclass(frozen=True, slots=True)
class Trigger:
    """An event filter. ``type``/``source``/``subject`` are exact strings or globs.
    Without ``batch``, every matching event starts one run.

    ``id`` names the trigger across edits of its pipeline (a batching trigger's windows
    are kept under it): the file's ``id:``, else derived from what the trigger matches
    and its batching ``key`` (so moving a trigger or tuning ``max_wait`` keeps its open
    windows; changing what it matches starts new ones)."""

    type: str
    source: str | None = None
    subject: str | None = None
    conditions: tuple[Condition, ...] = ()
    batch: Batching | None = None
    id: str = ""


@dataclass(frozen=True, slots=True)
class JoinSpec:
    """``join:``: one run once ``needed`` of ``triggers`` (trigger ids; all of them, or
    ``any: N``) have matched an event with the same value of ``key`` within ``within``
    seconds of the first. ``id`` names what decides the join (its triggers, key and
    count), so changing ``within`` keeps the open joins."""

    triggers: tuple[str, ...]
    needed: int
    key: str
    within: float
    id: str = ""


@dataclass(frozen=True, slots=True)
class Concurrency:
    """At most ``limit`` running runs of the pipeline per value of ``key`` (an event
    field, as a batching key; ``None``: per pipeline). The excess waits, in order."""

    limit: int
    key: str | None = None


@dataclass(frozen=True, slots=True)
class Throttle:
    """At most ``limit`` runs of the pipeline start in any ``period`` seconds, per value
    of ``key``. The excess waits, in order."""

    limit: int
    period: float
    key: str | None = None


@dataclass(frozen=True, slots=True)
class HttpCall:
    """An ``http:`` task: one request; its response (JSON if it parses) is the output.
    Without ``json`` or ``body``, a POST/PUT/PATCH sends the task's context as JSON."""

    url: str
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()
    json: Any = None
    body: str | None = None
    has_json: bool = False


@dataclass(frozen=True, slots=True)
class Task:
    """One node of the DAG: a Python callable (``module:function``) or a command."""

    name: str
    kind: Literal["python", "command", "http"]
    target: str | tuple[str, ...] | HttpCall
    needs: tuple[str, ...] = ()
    retries: int = 0
    backoff: Backoff = field(default_factory=Backoff)
    timeout: float | None = None
    route: str = "default"
    params: dict[str, Any] = field(default_factory=dict)
    #: a breaker of its own (``breaker:``) instead of its route's
    breaker: BreakerSpec | None = None
    #: services it needs (``needs_services:``, its pipeline's included): held while one is down
    needs_services: tuple[str, ...] = ()
    #: where its data may be processed (``residency:``, its pipeline's if it has none):
    #: only on routes of that residency
    residency: str | None = None
    #: the datasets it writes, as (namespace, name), for lineage (``outputs:``)
    outputs: tuple[tuple[str, str], ...] = ()

    @property
    def max_attempts(self) -> int:
        return self.retries + 1


@dataclass(frozen=True, slots=True)
class Pipeline:
    """A validated pipeline. ``tasks`` is in topological order of ``needs``."""

    name: str
    triggers: tuple[Trigger, ...]
    tasks: tuple[Task, ...]
    file: str = "<memory>"
    description: str = ""
    concurrency: Concurrency | None = None
    throttle: Throttle | None = None
    #: seconds from a run's trigger to its end, waiting included; then it fails
    timeout: float | None = None
    #: ``schedule:``: runs at the ticks of a cron expression or a period (``flow.schedule``)
    schedule: ScheduleSpec | None = None
    #: ``join:``: its triggers listed there start runs together, by key (``runs.joins``)
    join: JoinSpec | None = None

    def joins(self, trigger: str) -> bool:
        """Whether trigger ``trigger``'s events go to the join rather than start runs."""
        return self.join is not None and trigger in self.join.triggers

    @property
    def flow_key(self) -> str | Literal[False] | None:
        """The event field its runs are grouped by for ``concurrency`` and ``throttle``
        (``None``: one group, the pipeline), or ``False`` when it has neither."""
        if self.concurrency is None and self.throttle is None:
            return False
        keys = {spec.key for spec in (self.concurrency, self.throttle) if spec is not None}
        return keys.pop() if len(keys) == 1 else None

    def batch_of(self, trigger: str | int) -> Batching | None:
        """The batching of the trigger with id ``trigger`` (or, in records written before
        triggers had ids, at that position), if it batches."""
        if isinstance(trigger, int):
            return self.triggers[trigger].batch if 0 <= trigger < len(self.triggers) else None
        for candidate in self.triggers:
            if candidate.id == trigger:
                return candidate.batch
        return None

    def task(self, name: str) -> Task:
        for task in self.tasks:
            if task.name == name:
                return task
        raise KeyError(f"pipeline {self.name!r} has no task {name!r}")
