"""Backpressure: when a consumer stops taking work because what it feeds is full. Pure.

A ``Valve`` watches readings (how much work waits, by name, each with its bound; zero
until read) and decides whether its consumer may take more. It closes as soon as any
reading passes its bound, and opens again only once every reading is at or below
``resume_share`` of its bound, so a consumer working near a bound does not flap between
paused and running.

What must hold: a valve starts open; readings it is not given keep their last value (a
failed look at Kafka changes nothing); work the consumer adds itself counts at once
(``add``); every transition is reported exactly once, in order, by ``changes()``:
``flow.paused`` naming the readings over their bounds, with every reading and bound, and
``flow.resumed`` with the readings that let it open. A valve whose closing is part of
normal work (a busy worker at its in-flight bound) reports only a pause that lasted
``report_after`` seconds, and then its resume: a pause shorter than that says nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from headwater.runner.flow.gate import Change

#: A closed valve opens again once every reading is at or below this share of its bound.
RESUME_SHARE = 0.5


@dataclass(frozen=True, slots=True)
class Bounds:
    """How much waiting work the consumers of one process tolerate (``Settings``)."""

    #: the router stops when the control messages not yet applied plus the runs in
    #: progress (running or waiting for a concurrency/throttle slot) pass this
    pending_runs: int = 50_000
    #: the router stops when the task requests of any route not yet done pass this
    pending_tasks: int = 20_000
    #: bridges stop pulling from their sources when the events not yet routed pass this
    events_lag: int = 200_000


#: The readings a consumer adds its own work to between readings (``Valve.add``).
PENDING_RUNS = "runs pending (control lag + runs in progress)"
EVENTS_NOT_ROUTED = "events not routed"


class Valve:
    def __init__(
        self,
        scope: str,
        topic: str,
        bounds: Mapping[str, int],
        resume_share: float = RESUME_SHARE,
        *,
        report_after: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        **data: str,
    ) -> None:
        self.scope = scope
        self.topic = topic
        self._bounds = dict(bounds)
        self._values = dict.fromkeys(self._bounds, 0)
        self._resume_share = resume_share
        self._report_after = report_after
        self._clock = clock
        self._data = data
        self._open = True
        self._changes: list[Change] = []
        #: the pause not reported yet (``report_after``), with when it began
        self._held: tuple[float, Change] | None = None
        self._reported = True

    @property
    def is_open(self) -> bool:
        return self._open

    def observe(self, readings: Mapping[str, int]) -> bool:
        """Take new readings (of the names it was given bounds for; others are
        ignored); returns whether the valve is open now."""
        for name, value in readings.items():
            if name in self._values:
                self._values[name] = value
        bounds, values = self._bounds, self._values
        over = [name for name, value in values.items() if value > bounds[name]]
        if self._open and over:
            self._open = False
            reason = "; ".join(self._describe(name, ">") for name in over)
            paused = Change("flow.paused", self.scope, self._payload(reason))
            if self._report_after > 0:
                self._held, self._reported = (self._clock(), paused), False
            else:
                self._changes.append(paused)
        elif not self._open and all(
            value <= bounds[name] * self._resume_share for name, value in values.items()
        ):
            self._open = True
            self._release()
            if self._reported:
                reason = "drained: " + "; ".join(self._describe(n, "<=") for n in values)
                self._changes.append(Change("flow.resumed", self.scope, self._payload(reason)))
            self._held, self._reported = None, True
        return self._open

    def _release(self) -> None:
        """Report the held pause once it has lasted ``report_after``."""
        if self._held is not None and self._clock() - self._held[0] >= self._report_after:
            self._changes.append(self._held[1])
            self._held, self._reported = None, True

    def add(self, name: str, count: int) -> bool:
        """Work the consumer itself just passed on, before the next reading counts it
        (so a fast consumer overshoots its bound by at most one batch, not by what it
        does between readings); returns whether the valve is still open."""
        if name not in self._values:
            return self._open
        return self.observe({name: self._values[name] + count})

    def changes(self) -> list[Change]:
        if not self._open:
            self._release()
        changes, self._changes = self._changes, []
        return changes

    def _describe(self, name: str, relation: str) -> str:
        bound = self._bounds[name]
        limit = bound if relation == ">" else int(bound * self._resume_share)
        return f"{name} {self._values[name]:,} {relation} {limit:,}"

    def _payload(self, reason: str) -> dict[str, object]:
        return {
            **self._data,
            "topic": self.topic,
            "reason": reason,
            "counts": dict(self._values),
            "bounds": dict(self._bounds),
        }
