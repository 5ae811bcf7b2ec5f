"""Schedules: when a pipeline's ticks fall, and which of them start a run. Pure, no I/O.

A schedule is a cron expression read in a timezone (``cronsim``) or a fixed period
(``every``) counted from the Unix epoch, so every process computes the same ticks. A
tick is an instant (epoch seconds); the tick's time is its run's identity.

Daylight saving time, for cron schedules (cronsim's semantics, those of Debian's cron):

- a local time the clock skips (spring forward) fires once, at the first valid instant
  after the jump (``30 2 * * *`` on a day 02:00 -> 03:00 fires at 03:00);
- a local time the clock repeats (fall back) fires once, at its first occurrence;
- an expression that matches every hour (``0 * * * *``) fires on every hour that
  exists: 23 times on a spring-forward day, 25 times on a fall-back day (instants an
  hour apart).

What fires when a schedule is looked at (``decide``), given what it considered last:

- the ticks due since (``last < tick``, its ``fire_at`` passed), oldest first; the
  latest of them is *on time* when it is due by at most ``ON_TIME``; the others were
  **missed** (nothing ran while they fell);
- ``catchup`` says which missed ticks still run: ``all`` (those inside ``window``, in
  order, at most ``MAX_FIRES`` per look), ``latest`` (the latest one inside ``window``,
  also when it is late) or ``none``; the on-time tick always runs;
- ``overlap`` says what a tick does while the previous tick's run still runs: ``skip``
  (it does not run), ``buffer_one`` (it runs when the previous run ends; one such tick is
  kept, later ones are skipped) or ``allow`` (it runs alongside);
- a schedule seen for the first time starts from the look's time: ticks before it never
  run (a new or edited schedule does not catch up on its past);
- ``jitter`` delays each tick's start by a fraction of it derived from the pipeline and
  the tick (the same in every process).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

import orjson
from cronsim import CronSim, CronSimError

from headwater.runner.envelope import CloudEvent, epoch_iso

TICK_TYPE = "headwater.schedule.tick"
TICK_SOURCE_PREFIX = "/headwater/schedules/"
#: A tick due by at most this much is on time (a look that comes a little late).
ON_TIME = 60.0
#: Runs a catch-up starts per look; the rest start on the next look, at once.
MAX_FIRES = 500
#: Ticks a look walks over at most (a minute cron over a very long window).
MAX_WALK = 200_000

#: The nicknames many crons know, as the expressions cronsim reads.
CRON_ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

Catchup = Literal["all", "latest", "none"]
Overlap = Literal["skip", "buffer_one", "allow"]


@dataclass(frozen=True, slots=True)
class ScheduleSpec:
    """A pipeline's ``schedule:``. Exactly one of ``cron`` and ``every`` is set (the
    loader checks it); ``id`` names what decides the ticks (expression, period,
    timezone), so editing the catch-up, overlap or jitter keeps the schedule's state."""

    cron: str | None = None
    every: float | None = None
    timezone: str = "UTC"
    catchup: Catchup = "latest"
    window: float = 24 * 3600.0
    overlap: Overlap = "allow"
    jitter: float = 0.0
    id: str = field(default="")

    def __post_init__(self) -> None:
        if not self.id:
            identity = orjson.dumps([self.cron, self.every, self.timezone])
            object.__setattr__(self, "id", "s-" + hashlib.sha256(identity).hexdigest()[:12])

    def describe(self) -> dict[str, Any]:
        if self.cron is not None:
            return {"cron": self.cron, "timezone": self.timezone}
        return {"every": self.every}

    def ticks(self, after: float) -> Iterator[float]:
        """The ticks strictly after ``after``, in order (without end)."""
        if self.every is not None:
            period = self.every
            count = math.floor(after / period) + 1
            while True:  # count * period each time: no drift from adding floats
                yield count * period
                count += 1
        assert self.cron is not None
        zone = ZoneInfo(self.timezone)
        start = datetime.fromtimestamp(math.floor(after), zone)
        for when in CronSim(CRON_ALIASES.get(self.cron.strip(), self.cron), start):
            yield when.timestamp()

    def next_tick(self, after: float) -> float:
        return next(self.ticks(after))

    def delay(self, pipeline: str, tick: float) -> float:
        """How long after ``tick`` its run starts (``jitter``): the same everywhere."""
        if self.jitter <= 0:
            return 0.0
        digest = hashlib.sha256(f"{pipeline}@{tick!r}".encode()).digest()
        return self.jitter * int.from_bytes(digest[:4], "big") / 2**32

    def fire_at(self, pipeline: str, tick: float) -> float:
        return tick + self.delay(pipeline, tick)


def check_cron(expression: str) -> str | None:
    """Why ``expression`` is not a cron expression cronsim reads, if it is not."""
    try:
        CronSim(CRON_ALIASES.get(expression.strip(), expression), datetime.now(UTC))
    except CronSimError as exc:
        return f"not a cron expression: {exc}"
    except Exception as exc:  # noqa: BLE001 - any parser failure is the user's input
        return f"not a cron expression: {type(exc).__name__}: {exc}"
    return None


@dataclass(frozen=True, slots=True)
class ScheduleState:
    """What a schedule's owner keeps (in the run table's changelog): the latest tick it
    considered (run, skipped or missed), the run id of the latest tick it started, and
    the tick waiting for that run to end (``overlap: buffer_one``)."""

    last: float
    current: str | None = None
    buffered: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"last": self.last, "current": self.current, "buffered": self.buffered}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> ScheduleState:
        last, current, buffered = obj["last"], obj.get("current"), obj.get("buffered")
        if isinstance(last, bool) or not isinstance(last, int | float):
            raise ValueError("its last tick is not a number")
        if current is not None and not isinstance(current, str):
            raise ValueError("its current run is not a string")
        if buffered is not None and (
            isinstance(buffered, bool) or not isinstance(buffered, int | float)
        ):
            raise ValueError("its buffered tick is not a number")
        return cls(float(last), current, None if buffered is None else float(buffered))


@dataclass(frozen=True, slots=True)
class Fire:
    tick: float
    late: bool  # a missed tick caught up, not the on-time one
    buffered: bool = False  # it waited for the previous run (``overlap: buffer_one``)


@dataclass(frozen=True, slots=True)
class Decision:
    state: ScheduleState
    fire: tuple[Fire, ...] = ()
    #: ticks that did not run: (tick, why)
    passed: tuple[tuple[float, str], ...] = ()
    #: more ticks are due than one look starts: look again now
    more: bool = False


def decide(
    spec: ScheduleSpec,
    pipeline: str,
    state: ScheduleState | None,
    at: float,
    running: bool,
) -> Decision:
    """What a look at ``at`` starts, given the state and whether the latest tick's run
    is still running. The fired ticks' run ids are the caller's to record (``started``)."""
    if state is None:
        return Decision(ScheduleState(at))
    due: list[float] = []
    passed: list[tuple[float, str]] = []
    floor = at - spec.window
    for walked, tick in enumerate(spec.ticks(max(state.last, floor - ON_TIME)), 1):
        if spec.fire_at(pipeline, tick) > at:
            break
        if walked > MAX_WALK:  # the rest is far behind: count it missed, in one
            passed.append((tick, "missed: too many ticks behind to walk"))
            break
        due.append(tick)
    if not due:
        return Decision(state, (), tuple(passed))
    if state.last < floor - ON_TIME:
        passed.insert(0, (floor, "missed: before the catch-up window"))
    latest = due[-1]
    on_time = at - spec.fire_at(pipeline, latest) <= ON_TIME
    missed = due[:-1] if on_time else due
    inside = [t for t in missed if t >= floor]
    chosen: list[Fire]
    if spec.catchup == "all":
        chosen = [Fire(t, True) for t in inside]
    elif spec.catchup == "latest" and not on_time and inside:
        chosen = [Fire(inside[-1], True)]
    else:
        chosen = []
    if on_time:
        chosen.append(Fire(latest, False))
    more = False
    if len(chosen) > MAX_FIRES:
        chosen, more = chosen[:MAX_FIRES], True
        last = chosen[-1].tick
    else:
        last = latest
    kept = {fire.tick for fire in chosen}
    passed += [(t, "missed: nothing ran when it fell") for t in due if t not in kept and t <= last]
    fire, buffered = _overlap(spec, chosen, running, state.buffered, passed)
    return Decision(replace(state, last=last, buffered=buffered), tuple(fire), tuple(passed), more)


def _overlap(
    spec: ScheduleSpec,
    chosen: list[Fire],
    running: bool,
    buffered: float | None,
    passed: list[tuple[float, str]],
) -> tuple[list[Fire], float | None]:
    """The ticks that start now, and the one kept for later, under ``overlap``."""
    if spec.overlap == "allow":
        return chosen, buffered
    fire: list[Fire] = []
    for candidate in chosen:
        busy = running or bool(fire)
        if not busy:
            fire.append(candidate)
        elif spec.overlap == "buffer_one" and buffered is None:
            buffered = candidate.tick
        else:
            passed.append((candidate.tick, "skipped: the previous tick's run is still running"))
    return fire, buffered


def started(state: ScheduleState, run_id: str) -> ScheduleState:
    """The state once a tick's run started."""
    return replace(state, current=run_id)


def unbuffer(state: ScheduleState) -> tuple[ScheduleState, Fire | None]:
    """The latest tick's run ended: the buffered tick, if any, starts now."""
    if state.buffered is None:
        return state, None
    return replace(state, buffered=None), Fire(state.buffered, True, buffered=True)


def tick_event(spec: ScheduleSpec, pipeline: str, fire: Fire, now: float) -> dict[str, Any]:
    """The CloudEvent (JSON form) of a tick's run: its id is the tick's time (UTC), so
    the run table refuses a second run of the same tick."""
    scheduled = epoch_iso(fire.tick)
    event = CloudEvent(
        id=scheduled,
        source=TICK_SOURCE_PREFIX + pipeline,
        type=TICK_TYPE,
        subject=pipeline,
        time=epoch_iso(now),
        data={
            "scheduled": scheduled,
            "actual": epoch_iso(now),
            "schedule": spec.describe(),
            "late": fire.late,
            "buffered": fire.buffered,
        },
    )
    return event.to_dict()


def is_tick(event: dict[str, Any]) -> bool:
    return event.get("type") == TICK_TYPE
