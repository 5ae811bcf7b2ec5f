"""Concurrency and throttle of a control partition's runs (``concurrency:`` and
``throttle:`` in a pipeline file). Pure, no I/O.

A pipeline with either has its runs grouped by the value of their key in the triggering
event (``group_of``). The router and the control processor write all of a group's control
messages to one control partition (``control_key``), so the partition that owns a group
sees every run of it and the limits hold exactly, across processes and restarts:

- **concurrency** ``{limit, key}``: a run counts from its start until it finishes; a run
  requested while ``limit`` runs of its key are running waits (``queued``), in order;
- **throttle** ``{limit, period, key}``: at most ``limit`` runs of a key start in any
  ``period`` (a sliding window over the start times, a start counting a little longer
  than ``period``: ``MARGIN``); the excess waits, in order, and starts when the oldest
  start leaves the window.

Nothing is dropped: a waiting run is a running run whose tasks have not started (kept in
the changelog like any other), and it leaves the queue only by starting, or by failing
when its pipeline's ``timeout`` passes. The throttle's start times are a changelog record
per key (``starts_record``); a waiting run's place is its number in the queue (``Run.queued``).

What must hold: a group's runs start in the order they were requested; a run starts only
when both its concurrency slot and its throttle allow it; after a restore the same runs
count as running and the same starts as recent, so the limits go on exactly.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from headwater.runner.flow.schedule import is_tick
from headwater.runner.model.matching import MISSING, key_text, lookup
from headwater.runner.model.pipeline import Pipeline
from headwater.runner.runs.machine import Run
from headwater.runner.runs.store import FLOW_PREFIX

#: A throttle counts a start for its period and this much more (at most ``MARGIN`` s):
#: the limit then holds also for the start times the workers see, a little later and
#: not all equally late.
MARGIN_SHARE, MARGIN = 0.1, 0.5

Group = tuple[str, str | None]  # (pipeline, key value)


def key_of(event: dict[str, Any], key: str | None) -> str | None:
    """The value of ``key`` (``subject``, ``source``, ``type``, ``id`` or ``data.<path>``)
    in a CloudEvent's JSON form; ``None`` when absent (those runs share a group)."""
    if key is None:
        return None
    if key.startswith("data."):
        value = lookup(event.get("data"), tuple(key[5:].split(".")))
        if value is MISSING or value is None:
            return None
    else:
        value = event.get(key)
        if value is None:
            return None
    return key_text(value)


def group_of(pipeline: Pipeline, event: dict[str, Any]) -> Group | None:
    """The group a run of ``pipeline`` for ``event`` belongs to (``None``: no limits).
    A schedule's runs form one group, that of no key (the partition of its schedule)."""
    key = pipeline.flow_key
    if key is False:
        return None
    if is_tick(event):
        return pipeline.name, None
    return pipeline.name, key_of(event, key)


def schedule_key(pipeline: str) -> bytes:
    """The Kafka key of a schedule's ``ScheduleDue`` messages and of its runs' control
    messages: the same as its pipeline's group of no key, so the schedule, its runs and
    that group live in one control partition."""
    return orjson.dumps([pipeline, None])


def control_key(pipeline: Pipeline, event: dict[str, Any], run_id: str) -> bytes:
    """The Kafka key of a run's control messages: its group's, so a group is owned by
    one control partition, its schedule's for a tick's run, or its run id (runs spread
    over the partitions)."""
    if is_tick(event):
        return schedule_key(pipeline.name)
    group = group_of(pipeline, event)
    if group is None:
        return run_id.encode()
    return orjson.dumps(group)


def keyed_apart(pipeline: Pipeline, event: dict[str, Any]) -> bool:
    """Whether a run's control messages are keyed otherwise than by its run id."""
    return pipeline.flow_key is not False or is_tick(event)


def starts_record(group: Group, starts: Iterable[float] | None) -> tuple[bytes, bytes | None]:
    """The changelog record of a throttle key's recent starts (``None``: a tombstone)."""
    key = (FLOW_PREFIX + orjson.dumps(list(group)).decode()).encode()
    return key, None if starts is None else orjson.dumps({"starts": list(starts)})


@dataclass
class Flows:
    """One partition's groups: who holds a concurrency slot, recent starts per throttle
    key, and the waiting runs per group (a heap of ``(queued, run id)``)."""

    holders: dict[Group, set[str]] = field(default_factory=dict)
    slot_of: dict[str, Group] = field(default_factory=dict)
    starts: dict[Group, list[float]] = field(default_factory=dict)
    queues: dict[Group, list[tuple[int, str]]] = field(default_factory=dict)
    next_number: int = 0
    #: when each group's ``FlowDue`` timer goes off (one at a time per group)
    armed: dict[Group, float] = field(default_factory=dict)
    #: throttle keys whose starts changed since the last ``changed_starts``
    touched: set[Group] = field(default_factory=set)

    @classmethod
    def load(
        cls, runs: Iterable[Run], starts: Iterable[tuple[Group, list[float]]], pipelines: Any
    ) -> Flows:
        """The state a restore brings back: started runs of a limited pipeline hold their
        slot, waiting ones queue in their order."""
        flows = cls(starts={group: sorted(times) for group, times in starts})
        for run in runs:
            pipeline = pipelines.get(run.pipeline)
            group = group_of(pipeline, run.event) if pipeline is not None else None
            if run.status != "running" or group is None:
                continue
            if run.queued is None:
                flows.hold(run, pipeline)
            else:
                heapq.heappush(flows.queues.setdefault(group, []), (run.queued, run.run_id))
                flows.next_number = max(flows.next_number, run.queued + 1)
        return flows

    def waiting(self, group: Group) -> int:
        return len(self.queues.get(group, ()))

    def enqueue(self, run: Run, group: Group) -> None:
        run.queued = self.next_number
        self.next_number += 1
        heapq.heappush(self.queues.setdefault(group, []), (run.queued, run.run_id))

    def head(self, group: Group) -> str | None:
        queue = self.queues.get(group)
        return queue[0][1] if queue else None

    def pop(self, group: Group) -> None:
        queue = self.queues[group]
        heapq.heappop(queue)
        if not queue:
            del self.queues[group]

    def admits(self, run: Run, pipeline: Pipeline, now: float) -> float | None:
        """``None`` when ``run`` may start now; else when to look again (``inf``: when a
        running run of its key finishes)."""
        concurrency, throttle = pipeline.concurrency, pipeline.throttle
        if concurrency is not None:
            slot = (pipeline.name, key_of(run.event, concurrency.key))
            if len(self.holders.get(slot, ())) >= concurrency.limit:
                return float("inf")
        if throttle is not None:
            group = (pipeline.name, key_of(run.event, throttle.key))
            period = _counted(throttle.period)
            recent = self._recent(group, now, period)
            if len(recent) >= throttle.limit:
                return recent[len(recent) - throttle.limit] + period
        return None

    def _recent(self, group: Group, now: float, period: float) -> list[float]:
        starts = self.starts.get(group, [])
        kept = [t for t in starts if t > now - period]
        if len(kept) != len(starts):
            self.starts[group] = kept
            self.touched.add(group)
        return kept

    def start(self, run: Run, pipeline: Pipeline, now: float) -> None:
        """``run`` starts now: it takes its slot, its start counts for the throttle."""
        run.queued = None
        self.hold(run, pipeline)
        throttle = pipeline.throttle
        if throttle is not None:
            group = (pipeline.name, key_of(run.event, throttle.key))
            recent = self._recent(group, now, _counted(throttle.period))
            recent.append(now)
            self.starts[group] = recent[-throttle.limit :]
            self.touched.add(group)

    def hold(self, run: Run, pipeline: Pipeline) -> None:
        if pipeline.concurrency is not None:
            slot = (pipeline.name, key_of(run.event, pipeline.concurrency.key))
            self.holders.setdefault(slot, set()).add(run.run_id)
            self.slot_of[run.run_id] = slot

    def release(self, run_id: str) -> None:
        """A run ended: its slot is free."""
        slot = self.slot_of.pop(run_id, None)
        if slot is not None:
            holders = self.holders[slot]
            holders.discard(run_id)
            if not holders:
                del self.holders[slot]

    def changed_starts(self) -> dict[Group, list[float] | None]:
        """The throttle keys whose starts changed, with them (``None``: none left)."""
        out: dict[Group, list[float] | None] = {
            group: list(self.starts[group]) if self.starts.get(group) else None
            for group in self.touched
        }
        for group, starts in out.items():
            if starts is None:
                self.starts.pop(group, None)
        self.touched.clear()
        return out

    def expire(self, now: float, periods: dict[str, float]) -> None:
        """Forget the starts of keys whose last start left their window (``periods``:
        each throttled pipeline's period; a pipeline no longer throttled: all of them)."""
        for group in list(self.starts):
            self._recent(group, now, _counted(periods.get(group[0], 0.0)))


def _counted(period: float) -> float:
    """How long a start counts for a throttle of ``period``."""
    return period + min(MARGIN, period * MARGIN_SHARE)
