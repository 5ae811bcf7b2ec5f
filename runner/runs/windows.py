"""Batching triggers: events gathered into windows, one run per closed window. Pure, no I/O.

The router sends the events a batching trigger matched as ``EventsBatched`` control
messages keyed by the window's key, so every window lives in one control partition and has
one owner. The control processor folds them into its windows with ``add`` and checks the
timers it armed with ``due``. A closed window becomes an ordinary ``RunRequested``, written
to ``control`` keyed by its run id (the run lives in the partition of its id, like any
other); its event is a ``headwater.batch`` CloudEvent carrying the window's events in
``data.events``. What must always hold:

- an event is in at most one window: the router writes transactionally (a re-read event
  is not sent twice), and a window drops an event whose source and id it already holds,
  or that a closed window of the same key held (a source that delivered one event twice,
  even after its window closed): a closed window's event ids are kept as ``Closed`` for
  the dedup retention;
- a window's events travel in one Kafka message (the run's task requests), so a window
  also closes when its events reach ``MAX_BYTES``;
- the run id of a closed window derives from the window's key, opening time and first
  event, so re-applying the same control records yields the same run (the run table
  deduplicates it).

Times are the control processor's clock when it applies a message (processing time), not
the events' own ``time``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from headwater.runner.envelope import CloudEvent, epoch_iso
from headwater.runner.log.records import EventsBatched, RunRequested, WindowDue
from headwater.runner.model.matching import MISSING, key_text, lookup
from headwater.runner.model.pipeline import Batching
from headwater.runner.runs.machine import run_id_for

BATCH_TYPE = "headwater.batch"
BATCH_SOURCE_PREFIX = "/headwater/batches/"
MAX_BYTES = 512 * 1024
CloseReason = Literal["max_events", "max_wait", "quiet_for", "max_bytes"]


def window_key(pipeline: str, trigger: str, key: str | None) -> str:
    """The id of the window a pipeline's trigger keeps for one key value."""
    return orjson.dumps([pipeline, trigger, key]).decode()


def key_value(event: CloudEvent, key: str | None) -> str | None:
    """The value of a batching ``key`` (``subject``, ``source``, ``type``, ``id`` or
    ``data.<path>``) in ``event``; ``None`` when it is absent (those events share a window).
    """
    if key is None:
        return None
    if key.startswith("data."):
        value = lookup(event.data, tuple(key[5:].split(".")))
        if value is MISSING or value is None:
            return None
    else:
        value = getattr(event, key, None)
        if not isinstance(value, str):
            return None
    return key_text(value)


# --- state ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Window:
    window: str
    pipeline: str
    trigger: str | int  # its id; a position in windows opened before triggers had ids
    key: str | None
    opened_at: float
    last_at: float
    events: list[dict[str, Any]] = field(default_factory=list)
    size: int = 0
    seen: set[tuple[str, str]] = field(default_factory=set)

    def deadline(self, spec: Batching) -> float:
        """When the window closes if no more events come (debounce moves it later)."""
        candidates = [math.inf]
        if spec.max_wait is not None:
            candidates.append(self.opened_at + spec.max_wait)
        if spec.quiet_for is not None:
            candidates.append(self.last_at + spec.quiet_for)
        return min(candidates)

    def to_json(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "pipeline": self.pipeline,
            "trigger": self.trigger,
            "key": self.key,
            "opened_at": self.opened_at,
            "last_at": self.last_at,
            "events": self.events,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Window:
        events = obj.pop("events")
        window = cls(**obj)
        for event in events:
            window.append(event, len(orjson.dumps(event)))
        return window

    def append(self, event: dict[str, Any], size: int) -> None:
        self.events.append(event)
        self.seen.add(_identity(event))
        self.size += size


@dataclass(frozen=True, slots=True)
class Closed:
    """The event ids (source, id) of a window that closed into run ``run_id``: a
    redelivery of one of them is dropped until the dedup retention has passed."""

    run_id: str
    window: str
    closed_at: float
    ids: tuple[tuple[str, str], ...]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Closed:
        ids = tuple((str(source), str(id_)) for source, id_ in obj["ids"])
        return cls(str(obj["run_id"]), str(obj["window"]), float(obj["closed_at"]), ids)

    @classmethod
    def of(cls, run: RunRequested, window: str, now: float) -> Closed:
        return cls(run.run_id, window, now, tuple(map(_identity, run.event["data"]["events"])))


@dataclass(frozen=True, slots=True)
class Fold:
    """The outcome of ``add`` or ``due``: the window left open (if any), the runs of the
    windows that closed, and when to check the open window again (``None``: no new timer).
    """

    window: Window | None
    runs: list[RunRequested]
    check_at: float | None = None


def add(
    window: Window | None,
    message: EventsBatched,
    spec: Batching,
    now: float,
    closed: Callable[[tuple[str, str]], bool] = lambda identity: False,
) -> Fold:
    """Append ``message``'s events to the open window, closing it whenever it is full;
    ``closed`` says whether an event (source, id) was in a closed window of this key."""
    original, runs = window, []
    just_closed: set[tuple[str, str]] = set()  # by this message
    for event in message.events:
        identity = _identity(event)
        if window is not None and identity in window.seen:
            continue  # the source delivered this event twice
        if identity in just_closed or closed(identity):
            continue  # ... and the window that took it closed already
        size = len(orjson.dumps(event))
        if window is not None and window.size + size > MAX_BYTES:
            runs.append(close(window, "max_bytes", now))
            just_closed |= window.seen
            window = None
        if window is None:
            window = Window(
                message.window, message.pipeline, message.trigger, message.key, now, now
            )
        window.append(event, size)
        window.last_at = now
        if spec.max_events is not None and len(window.events) >= spec.max_events:
            runs.append(close(window, "max_events", now))
            just_closed |= window.seen
            window = None
    if window is None or window is original:
        return Fold(window, runs)
    return Fold(window, runs, window.deadline(spec))  # a new window: arm its timer


def due(window: Window | None, message: WindowDue, spec: Batching, now: float) -> Fold:
    """A timer went off: close the window if its time has come, else check again later."""
    if window is None or window.opened_at != message.opened_at:
        return Fold(window, [])  # that window closed already
    deadline = window.deadline(spec)
    if now < deadline:
        return Fold(window, [], deadline)  # debounced: an event came in meanwhile
    waited = spec.max_wait is not None and now >= window.opened_at + spec.max_wait
    return Fold(None, [close(window, "max_wait" if waited else "quiet_for", now)])


def close(window: Window, reason: CloseReason, now: float) -> RunRequested:
    """The run of a closed window: its event is a ``headwater.batch`` CloudEvent."""
    first = window.events[0]
    run_id = run_id_for(
        window.pipeline,
        f"{window.opened_at!r}/{first.get('source')}/{first.get('id')}",
        f"batch:{window.window}",
    )
    event: dict[str, Any] = {
        "specversion": "1.0",
        "id": run_id,
        "source": BATCH_SOURCE_PREFIX + window.pipeline,
        "type": BATCH_TYPE,
        "time": epoch_iso(now),
        "datacontenttype": "application/json",
        "data": {
            "reason": reason,
            "count": len(window.events),
            "key": window.key,
            "opened_at": epoch_iso(window.opened_at),
            "events": window.events,
        },
    }
    if window.key is not None:
        event["subject"] = window.key
    return RunRequested(run_id, window.pipeline, event)


def _identity(event: dict[str, Any]) -> tuple[str, str]:
    return str(event.get("source")), str(event.get("id"))
