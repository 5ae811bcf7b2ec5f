"""What ``headwater status`` prints: the current state of every breaker, service, pause
and route, folded from the ``hw.status`` CloudEvents, the workers heard on
``hw.heartbeats`` in the last minute, and the consumer lags. Pure.

Each component (a worker's breaker for a route or task, a worker's view of a service, a
consumer's pause) reports its transitions, so its state is its latest event: keyed by
what it is about (the event's subject), its kind (breaker, service, flow) and the
instance that reported it. A state is shown with its age, so that one reported by a
process that has since gone away reads as old rather than as current.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from headwater.runner import metrics
from headwater.runner.envelope import CloudEvent, new_id, now_iso
from headwater.runner.flow.gate import Change

#: The state each status event type leaves its component in.
STATES = {
    "headwater.breaker.opened": ("breaker", "open"),
    "headwater.breaker.half_opened": ("breaker", "half-open"),
    "headwater.breaker.closed": ("breaker", "closed"),
    "headwater.service.unhealthy": ("service", "unhealthy"),
    "headwater.service.healthy": ("service", "healthy"),
    "headwater.flow.paused": ("flow", "paused"),
    "headwater.flow.resumed": ("flow", "running"),
    "headwater.route.down": ("route", "down"),
    "headwater.route.up": ("route", "up"),
}
REASON_CHARS = 200


@dataclass(frozen=True, slots=True)
class Component:
    kind: str  # breaker, service, flow
    scope: str  # the event's subject: "route default", "task p/t", "service aws.s3"...
    instance: str
    state: str
    since: str  # the event's time (ISO 8601)
    reason: str = ""


@dataclass
class Status:
    components: dict[tuple[str, str, str], Component] = field(default_factory=dict)
    #: (consumer group, topic) -> lag (records not yet consumed)
    lags: dict[tuple[str, str], int] = field(default_factory=dict)
    #: route -> instance -> its latest heartbeat (region, free capacity, at: Unix time)
    workers: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)

    def heard(self, beats: Iterable[Any]) -> Status:
        """Apply heartbeats (decoded ``hw.heartbeats`` values), oldest first; garbled
        ones are ignored."""
        for beat in beats:
            if not isinstance(beat, dict):
                continue
            route, instance, at = beat.get("route"), beat.get("instance"), beat.get("at")
            if not isinstance(route, str) or not isinstance(instance, str):
                continue
            if isinstance(at, bool) or not isinstance(at, int | float):
                continue
            free = beat.get("free")
            self.workers.setdefault(route, {})[instance] = {
                "region": beat.get("region") if isinstance(beat.get("region"), str) else None,
                "free": free if isinstance(free, int) and not isinstance(free, bool) else None,
                "at": float(at),
            }
        return self

    def fold(self, events: Iterable[Mapping[str, Any]]) -> Status:
        """Apply status CloudEvents (structured JSON form), oldest first; others are
        ignored."""
        for event in events:
            known = STATES.get(str(event.get("type")))
            if known is None:
                continue
            data = event.get("data") if isinstance(event.get("data"), dict) else {}
            kind, state = known
            scope = str(event.get("subject") or "")
            instance = str(data.get("instance", "")) if isinstance(data, dict) else ""
            reason = str(data.get("reason", "")) if isinstance(data, dict) else ""
            component = Component(
                kind, scope, instance, state, str(event.get("time") or ""), reason
            )
            # a route's state is its latest report, whichever process noticed it
            self.components[(kind, scope, "" if kind == "route" else instance)] = component
        return self

    def of(self, kind: str) -> list[Component]:
        return sorted(
            (c for c in self.components.values() if c.kind == kind),
            key=lambda c: (c.scope, c.instance),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "breakers": [_json(c) for c in self.of("breaker")],
            "services": [_json(c) for c in self.of("service")],
            "paused": [_json(c) for c in self.of("flow") if c.state == "paused"],
            "routes": {
                route: {
                    "workers": [
                        {"instance": instance, **beat}
                        for instance, beat in sorted(self.workers.get(route, {}).items())
                    ],
                    "down": [
                        _json(c)
                        for c in self.of("route")
                        if c.scope == f"route {route}" and c.state == "down"
                    ],
                }
                for route in self._routes()
            },
            "lags": [
                {"group": group, "topic": topic, "lag": lag}
                for (group, topic), lag in sorted(self.lags.items())
            ],
        }

    def render(self, now: datetime) -> str:
        lines = []
        for title, kind, only in (
            ("breakers", "breaker", None),
            ("services", "service", None),
            ("paused", "flow", "paused"),
        ):
            shown = [c for c in self.of(kind) if only is None or c.state == only]
            lines.append(f"{title}:" if shown else f"{title}: none")
            for c in shown:
                reason = f" - {c.reason[:REASON_CHARS]}" if c.reason else ""
                lines.append(
                    f"  {c.scope} [{c.instance or '?'}]: {c.state} since {c.since} "
                    f"({_age(c.since, now)}){reason}"
                )
        routes = self._routes()
        lines.append("routes:" if routes else "routes: none heard (no worker heartbeats)")
        for route in routes:
            beats = self.workers.get(route, {})
            if beats:
                last = max(beat["at"] for beat in beats.values())
                regions = sorted({str(b["region"]) for b in beats.values() if b["region"]})
                free = sum(b["free"] or 0 for b in beats.values())
                where = f" ({', '.join(regions)})" if regions else ""
                lines.append(
                    f"  {route}{where}: {len(beats)} worker(s), last heartbeat "
                    f"{_age_of(now.timestamp() - last)}, {free} free slot(s)"
                )
            else:
                lines.append(f"  {route}: no heartbeat in the last minute")
            for c in self.of("route"):
                if c.scope == f"route {route}" and c.state == "down":
                    lines.append(f"    down since {c.since} ({_age(c.since, now)}) - {c.reason}")
        lines.append("lags:" if self.lags else "lags: none (no consumer group has offsets)")
        for (group, topic), lag in sorted(self.lags.items()):
            lines.append(f"  {group} on {topic}: {lag}")
        return "\n".join(lines)

    def _routes(self) -> list[str]:
        """Routes heard from, or said down and not up since."""
        down = {c.scope.removeprefix("route ") for c in self.of("route") if c.state == "down"}
        return sorted(set(self.workers) | down)


def _json(c: Component) -> dict[str, Any]:
    return {
        "scope": c.scope,
        "instance": c.instance,
        "state": c.state,
        "since": c.since,
        "reason": c.reason,
    }


def _age(since: str, now: datetime) -> str:
    try:
        seconds = (now - datetime.fromisoformat(since)).total_seconds()
    except (ValueError, TypeError):
        return "age unknown"
    return _age_of(seconds)


def _age_of(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def status_event(change: Change, instance: str, role: str) -> CloudEvent:
    """The CloudEvent of one flow transition (``headwater.breaker.opened``,
    ``headwater.flow.paused``...) reported by ``role`` (worker, router...) of ``instance``."""
    metrics.flow_change(change.kind, change.scope)
    return CloudEvent(
        id=new_id(),
        source=f"headwater/{role}/{instance}",
        type=f"headwater.{change.kind}",
        subject=change.scope,
        time=now_iso(),
        data={**change.data, "instance": instance},
    )
