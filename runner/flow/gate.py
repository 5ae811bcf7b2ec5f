"""What lets a worker's task requests run now: the circuit breakers of its route. Pure,
the clock injected; the worker's loop only asks and reports (``worker.py``).

Every task of the route shares the route's breaker (``Settings.breaker``, off when
``None``); a task with ``breaker:`` of its own in its pipeline file has its own instead,
so a flaky service one task calls does not stop the route's other tasks. A request that
``admit`` refuses is held, not run: no attempt is spent on a service known to be down.

What must hold: a request is admitted only while its breaker is closed, or as one of the
half-open breaker's probes; every transition is reported exactly once, in order, by
``changes()``; ``holding()`` is why the route holds requests, while any breaker is not
closed; ``paused()`` (the route's own breaker open) is when fetching should stop: in
half-open, fetching goes on, so a probe can arrive.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from headwater.runner.flow.breaker import Breaker, BreakerSpec, State

#: A failure's error text kept as the reason a breaker opened.
REASON_CHARS = 300
_EVENT = {"open": "breaker.opened", "half-open": "breaker.half_opened", "closed": "breaker.closed"}


@dataclass(frozen=True, slots=True)
class Change:
    """One transition to publish (``hw.status``) and log: ``kind`` such as
    ``breaker.opened``, ``scope`` what it is about (``route default`` or
    ``task nightly/load``), ``data`` its details."""

    kind: str
    scope: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class _Watched:
    breaker: Breaker
    state: State = "closed"
    reason: str = ""
    pipeline: str | None = None
    task: str | None = None


class Gate:
    def __init__(self, route: str, default: BreakerSpec | None, clock: Callable[[], float]) -> None:
        self.route = route
        self._default = default
        self._clock = clock
        self._breakers: dict[str, _Watched] = {}
        self._changes: list[Change] = []
        self._paused = False

    def admit(self, pipeline: str, task: str, spec: BreakerSpec | None) -> bool:
        """Whether one request of ``pipeline``'s ``task`` may run now (a half-open
        breaker's probe counts as admitted)."""
        return self._ask(pipeline, task, spec, take=True)

    def ready(self, pipeline: str, task: str, spec: BreakerSpec | None) -> bool:
        """Whether ``admit`` would admit the request now (takes no probe): a request waits
        for this before it waits for a slot, and is admitted only once it has one."""
        return self._ask(pipeline, task, spec, take=False)

    def _ask(self, pipeline: str, task: str, spec: BreakerSpec | None, take: bool) -> bool:
        watched = self._watched(pipeline, task, spec)
        if watched is None:
            return True
        answer = watched.breaker.allow() if take else watched.breaker.ready()
        self._note(self._scope(pipeline, task, spec), watched)
        return answer

    def wait_hint(self, pipeline: str, task: str, spec: BreakerSpec | None) -> float:
        """Seconds until a refused request may be admitted (its breaker half-opens);
        while half-open with every probe out, a second: the probe's outcome decides."""
        watched = self._watched(pipeline, task, spec)
        reopens = watched.breaker.reopens_at if watched else None
        return 1.0 if reopens is None else max(0.0, reopens - self._clock())

    def outcome(
        self,
        pipeline: str,
        task: str,
        spec: BreakerSpec | None,
        ok: bool,
        retriable: bool,
        error: str | None = None,
    ) -> None:
        """Report an admitted request's result: only a ``retriable`` failure counts."""
        watched = self._watched(pipeline, task, spec)
        if watched is None:
            return
        if ok:
            watched.breaker.succeeded()
        else:
            if retriable and error:
                watched.reason = error[:REASON_CHARS]
            watched.breaker.failed(retriable)
        self._note(self._scope(pipeline, task, spec), watched)

    def abandon(self, pipeline: str, task: str, spec: BreakerSpec | None) -> None:
        """An admitted request ended without an outcome (the worker is stopping)."""
        watched = self._watched(pipeline, task, spec)
        if watched is not None:
            watched.breaker.abandoned()

    def poll(self) -> None:
        """Notice the breakers whose cooldown ran out (open -> half-open)."""
        for scope, watched in self._breakers.items():
            self._note(scope, watched)

    def changes(self) -> list[Change]:
        """The transitions since the last call, in order (pauses of the route included)."""
        self.poll()
        paused = self.paused()
        if paused != self._paused:
            self._paused = paused
            kind = "flow.paused" if paused else "flow.resumed"
            reason = f"the circuit breaker of route {self.route!r} is open" if paused else ""
            self._changes.append(Change(kind, f"route {self.route}", self._data(reason)))
        changes, self._changes = self._changes, []
        return changes

    def holding(self) -> str | None:
        """Why requests of this route are held, while any of its breakers is not closed."""
        for scope, watched in self._breakers.items():
            if watched.breaker.state != "closed":
                return f"circuit breaker of {scope} is {watched.breaker.state}: {watched.reason}"
        return None

    def paused(self) -> bool:
        """Whether the route's own breaker is open: fetching its requests stops."""
        watched = self._breakers.get(self._route_scope())
        return watched is not None and watched.breaker.state == "open"

    def states(self) -> dict[str, State]:
        return {scope: watched.breaker.state for scope, watched in self._breakers.items()}

    def _watched(self, pipeline: str, task: str, spec: BreakerSpec | None) -> _Watched | None:
        if spec is None and self._default is None:
            return None
        scope = self._scope(pipeline, task, spec)
        watched = self._breakers.get(scope)
        wanted = spec or self._default
        assert wanted is not None
        if watched is None or watched.breaker.spec != wanted:  # new, or its file changed
            watched = _Watched(Breaker(wanted, self._clock))
            if spec is not None:
                watched.pipeline, watched.task = pipeline, task
            self._breakers[scope] = watched
        return watched

    def _scope(self, pipeline: str, task: str, spec: BreakerSpec | None) -> str:
        return self._route_scope() if spec is None else f"task {pipeline}/{task}"

    def _route_scope(self) -> str:
        return f"route {self.route}"

    def _note(self, scope: str, watched: _Watched) -> None:
        state = watched.breaker.state
        if state == watched.state:
            return
        previous, watched.state = watched.state, state
        data = self._data(watched.reason if state != "closed" else "")
        data.update(scope=scope, state=state, previous=previous)
        if watched.pipeline is not None:
            data.update(pipeline=watched.pipeline, task=watched.task)
        reopens = watched.breaker.reopens_at
        if reopens is not None:
            data["reopens_in_s"] = round(max(0.0, reopens - self._clock()), 3)
        self._changes.append(Change(_EVENT[state], scope, data))

    def _data(self, reason: str) -> dict[str, Any]:
        return {"route": self.route, "reason": reason}
