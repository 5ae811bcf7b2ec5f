"""Joins (``join:`` in a pipeline file): one run once the listed triggers have each
matched an event with the same key within a time. Pure, no I/O.

The router sends the events a join's triggers matched as ``EventsJoined`` control
messages keyed by the join's key (pipeline, join id, key value), so every open join lives
in one control partition, in the run table's changelog like a batching window. What must
always hold:

- a join starts one run, when ``needed`` of its triggers (all of them, or ``any: N``)
  have matched an event of its key, in whatever order the events came, also across a
  restart (the open join is in the changelog);
- an event counts once: one whose (source, id) the open join holds, or a closed join of
  the same key held within the dedup retention (``windows.Closed``), is dropped;
- a join that is not complete ``within`` its time after its first event expires and
  says so (``Expired``: which triggers matched, which are missing); an event that comes
  after that opens a new join;
- memory is bounded: a join keeps at most ``MAX_EVENTS`` events per trigger and
  ``MAX_BYTES`` in all (the run's events travel in one Kafka message); more are counted,
  not kept.

Times are the control processor's clock when it applies a message.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from headwater.runner.envelope import epoch_iso
from headwater.runner.log.records import EventsJoined, JoinDue, RunRequested
from headwater.runner.model.pipeline import JoinSpec
from headwater.runner.runs.machine import run_id_for

JOIN_TYPE = "headwater.join"
JOIN_SOURCE_PREFIX = "/headwater/joins/"
EXPIRED_TYPE = "headwater.join.expired"
MAX_BYTES = 512 * 1024
MAX_EVENTS = 100  # per trigger


def join_key(pipeline: str, join: str, key: str) -> str:
    """The id of the join a pipeline keeps for one key value."""
    return orjson.dumps([pipeline, join, key]).decode()


@dataclass(slots=True)
class Join:
    join: str
    pipeline: str
    key: str
    opened_at: float
    #: trigger id -> its events, in arrival order
    events: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    size: int = 0
    #: events not kept (over ``MAX_EVENTS`` per trigger or ``MAX_BYTES``)
    dropped: int = 0
    seen: set[tuple[str, str]] = field(default_factory=set)

    def matched(self) -> list[str]:
        return [trigger for trigger, events in self.events.items() if events]

    def to_json(self) -> dict[str, Any]:
        return {
            "join": self.join,
            "pipeline": self.pipeline,
            "key": self.key,
            "opened_at": self.opened_at,
            "events": self.events,
            "dropped": self.dropped,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Join:
        join = cls(
            str(obj["join"]),
            str(obj["pipeline"]),
            str(obj["key"]),
            float(obj["opened_at"]),
            dropped=int(obj.get("dropped", 0)),
        )
        events = obj["events"]
        if not isinstance(events, dict):
            raise ValueError("its events are not an object by trigger")
        for trigger, kept in events.items():
            if not isinstance(kept, list) or not all(isinstance(e, dict) for e in kept):
                raise ValueError(f"its events of trigger {trigger!r} are not a list of events")
            for event in kept:
                join.append(str(trigger), event, len(orjson.dumps(event)))
        return join

    def append(self, trigger: str, event: dict[str, Any], size: int) -> None:
        self.events.setdefault(trigger, []).append(event)
        self.seen.add(_identity(event))
        self.size += size


@dataclass(frozen=True, slots=True)
class Expired:
    """A join that was not complete within its time: for ``hw.status``."""

    pipeline: str
    key: str
    opened_at: float
    expired_at: float
    matched: tuple[str, ...]
    missing: tuple[str, ...]
    events: int

    def data(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline,
            "key": self.key,
            "opened_at": epoch_iso(self.opened_at),
            "expired_at": epoch_iso(self.expired_at),
            "matched": list(self.matched),
            "missing": list(self.missing),
            "events": self.events,
        }


@dataclass(frozen=True, slots=True)
class Fold:
    """What ``add`` or ``due`` did: the join left open (if any), the run of a completed
    one, the expired one, and when to look at the open join again."""

    join: Join | None
    runs: list[RunRequested] = field(default_factory=list)
    expired: list[Expired] = field(default_factory=list)
    check_at: float | None = None
    #: events dropped as already counted (redelivered)
    repeated: int = 0


def add(
    join: Join | None,
    message: EventsJoined,
    spec: JoinSpec,
    now: float,
    closed: Callable[[tuple[str, str]], bool] = lambda identity: False,
) -> Fold:
    """Count ``message``'s events in the open join of their key (opening one, after
    expiring one whose time is up); a join that is complete starts its run."""
    runs: list[RunRequested] = []
    expired: list[Expired] = []
    original, repeated = join, 0
    just_closed: set[tuple[str, str]] = set()
    if message.trigger not in spec.triggers:
        return Fold(join)  # the join was edited since the router sent it
    for event in message.events:
        identity = _identity(event)
        if join is not None and now >= join.opened_at + spec.within:
            expired.append(_expired(join, spec, now))
            join = None
        if (join is not None and identity in join.seen) or identity in just_closed:
            repeated += 1
            continue
        if closed(identity):
            repeated += 1
            continue
        if join is None:
            join = Join(message.join, message.pipeline, message.key, now)
        size = len(orjson.dumps(event))
        kept = join.events.get(message.trigger, ())
        if len(kept) >= MAX_EVENTS or join.size + size > MAX_BYTES:
            join.dropped += 1
            join.seen.add(identity)
            continue
        join.append(message.trigger, event, size)
        if len(join.matched()) >= spec.needed:
            runs.append(complete(join, now))
            just_closed |= join.seen
            join = None
    if join is None or join is original:
        return Fold(join, runs, expired, None, repeated)
    return Fold(join, runs, expired, join.opened_at + spec.within, repeated)


def due(join: Join | None, message: JoinDue, spec: JoinSpec | None, now: float) -> Fold:
    """The join's time is up: it expires, unless it closed or its time was lengthened."""
    if join is None or join.opened_at != message.opened_at:
        return Fold(join)
    if spec is not None and now < join.opened_at + spec.within:
        return Fold(join, check_at=join.opened_at + spec.within)
    return Fold(None, expired=[_expired(join, spec, now)])


def complete(join: Join, now: float) -> RunRequested:
    """The run of a complete join: its event is a ``headwater.join`` CloudEvent with
    every joined event, by trigger and in arrival order (``ctx.events``)."""
    everything = [event for events in join.events.values() for event in events]
    first = everything[0]
    run_id = run_id_for(
        join.pipeline,
        f"{join.opened_at!r}/{first.get('source')}/{first.get('id')}",
        f"join:{join.join}",
    )
    event: dict[str, Any] = {
        "specversion": "1.0",
        "id": run_id,
        "source": JOIN_SOURCE_PREFIX + join.pipeline,
        "type": JOIN_TYPE,
        "subject": join.key,
        "time": epoch_iso(now),
        "datacontenttype": "application/json",
        "data": {
            "key": join.key,
            "opened_at": epoch_iso(join.opened_at),
            "triggers": join.events,
            "events": everything,
            "dropped": join.dropped,
        },
    }
    return RunRequested(run_id, join.pipeline, event)


def _expired(join: Join, spec: JoinSpec | None, now: float) -> Expired:
    matched = tuple(join.matched())
    wanted = spec.triggers if spec is not None else matched
    missing = tuple(t for t in wanted if t not in matched)
    count = sum(len(events) for events in join.events.values()) + join.dropped
    return Expired(join.pipeline, join.key, join.opened_at, now, matched, missing, count)


def _identity(event: dict[str, Any]) -> tuple[str, str]:
    return str(event.get("source")), str(event.get("id"))
