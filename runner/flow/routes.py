"""Routes' liveness and failover: which routes have live workers, and which dead route
a process's workers serve for it. Pure, with the clock given.

Workers announce each route they serve on ``hw.heartbeats`` every few seconds. A route
whose last heartbeat is older than ``failover_after`` (or that was never heard since the
watcher started that long ago) is **down**; its tasks are then served by the first route
of its ``fallback`` list that is alive — the workers of that route join the down route's
consumer group, so the requests already waiting there and those dispatched later run on
them — until the route is heard again, when they leave it. What must hold: at most one
fallback route serves a down route at a time (the first alive, in the listed order, the
same in every process that sees the same heartbeats); a route is never its own fallback;
a fallback keeps the route's residency (the config file refuses one that does not), so
failing over never moves a task out of its residency.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class RouteInfo:
    name: str
    region: str | None = None
    residency: str | None = None
    fallback: tuple[str, ...] = ()
    #: the cloud its workers run in (None: outside any; for egress)
    cloud: str | None = None


@dataclass
class RouteMap:
    routes: Mapping[str, RouteInfo]
    failover_after: float
    started: float
    #: route -> instance -> when it was last heard
    heard: dict[str, dict[str, float]] = field(default_factory=dict)

    @classmethod
    def of(cls, routes: Iterable[RouteInfo], failover_after: float, now: float) -> RouteMap:
        return cls({route.name: route for route in routes}, failover_after, now)

    def seen(self, route: str, instance: str, at: float) -> None:
        instances = self.heard.setdefault(route, {})
        instances[instance] = max(at, instances.get(instance, 0.0))

    def last_heard(self, route: str) -> float | None:
        instances = self.heard.get(route)
        return max(instances.values()) if instances else None

    def alive(self, route: str, now: float) -> bool:
        last = self.last_heard(route)
        if last is None:  # never heard: alive until the watcher has listened long enough
            return now - self.started < self.failover_after
        return now - last <= self.failover_after

    def live_instances(self, route: str, now: float) -> list[str]:
        return sorted(
            instance
            for instance, at in self.heard.get(route, {}).items()
            if now - at <= self.failover_after
        )

    def server(self, route: str, now: float) -> str | None:
        """The route that serves ``route`` now: itself while alive, else the first alive
        route of its fallbacks (``None``: none is alive)."""
        if self.alive(route, now):
            return route
        info = self.routes.get(route)
        for fallback in info.fallback if info is not None else ():
            if fallback != route and self.alive(fallback, now):
                return fallback
        return None

    def served_by(self, mine: Iterable[str], now: float) -> set[str]:
        """The down routes that routes ``mine`` (this process's) serve now."""
        own = set(mine)
        return {
            route for route in self.routes if route not in own and self.server(route, now) in own
        }

    def down(self, now: float) -> dict[str, str | None]:
        """Each declared route that is down, with the route serving it (or ``None``)."""
        return {
            route: self.server(route, now) for route in self.routes if not self.alive(route, now)
        }
