"""A validated pipeline file's plain data -> the ``Pipeline`` model. Pure.

Called only on data the loader and ``checks`` found no problem with; tasks come out in
topological order of ``needs`` (ready tasks in file order).
"""

from __future__ import annotations

import hashlib
import heapq
from dataclasses import replace
from typing import Any, cast

import orjson

from headwater.runner.durations import parse_duration
from headwater.runner.flow.backoff import Backoff
from headwater.runner.flow.breaker import BreakerSpec
from headwater.runner.flow.schedule import ScheduleSpec
from headwater.runner.model.pipeline import (
    Batching,
    Comparison,
    Concurrency,
    Condition,
    HttpCall,
    JoinSpec,
    Pipeline,
    Task,
    Throttle,
    Trigger,
)

_DEFAULT_BACKOFF = Backoff()


def _topological(tasks: dict[str, Task]) -> tuple[Task, ...]:
    """Kahn's algorithm; among ready tasks the one earliest in the file goes first."""
    position = {name: index for index, name in enumerate(tasks)}
    waiting = {name: set(task.needs) for name, task in tasks.items()}
    needed_by: dict[str, list[str]] = {name: [] for name in tasks}
    for name, task in tasks.items():
        for need in task.needs:
            needed_by[need].append(name)
    ready = [position[name] for name, needs in waiting.items() if not needs]
    heapq.heapify(ready)
    names = list(tasks)
    ordered: list[Task] = []
    while ready:
        name = names[heapq.heappop(ready)]
        ordered.append(tasks[name])
        for later in needed_by[name]:
            waiting[later].discard(name)
            if not waiting[later]:
                heapq.heappush(ready, position[later])
    return tuple(ordered)


def build(data: dict[str, Any], file: str) -> Pipeline:
    """The model of a file that passed every check."""
    services = tuple(data.get("needs_services", ()))
    residency = data.get("residency")
    tasks = {name: _task(name, spec, services, residency) for name, spec in data["tasks"].items()}
    concurrency = data.get("concurrency")
    throttle = data.get("throttle")
    timeout = data.get("timeout")
    return Pipeline(
        name=data["name"],
        triggers=_identified([_trigger(spec) for spec in data.get("triggers", ())]),
        tasks=_topological(tasks),
        file=file,
        description=data.get("description", ""),
        concurrency=None
        if concurrency is None
        else Concurrency(int(concurrency["limit"]), concurrency.get("key")),
        throttle=None
        if throttle is None
        else Throttle(
            int(throttle["limit"]), parse_duration(throttle["period"]), throttle.get("key")
        ),
        timeout=None if timeout is None else parse_duration(timeout),
        schedule=_schedule(data["schedule"]) if "schedule" in data else None,
        join=_join(data["join"]) if "join" in data else None,
    )


def _join(spec: dict[str, Any]) -> JoinSpec:
    triggers = tuple(spec["all"] if "all" in spec else spec["of"])
    needed = len(triggers) if "all" in spec else int(spec["any"])
    identity = orjson.dumps([sorted(triggers), needed, spec["key"]])
    join_id = "j-" + hashlib.sha256(identity).hexdigest()[:12]
    return JoinSpec(triggers, needed, spec["key"], parse_duration(spec["within"]), join_id)


def _schedule(spec: dict[str, Any]) -> ScheduleSpec:
    catchup = spec.get("catchup", {})
    defaults = ScheduleSpec(every=1.0)
    return ScheduleSpec(
        cron=spec.get("cron"),
        every=parse_duration(spec["every"]) if "every" in spec else None,
        timezone=spec.get("timezone", "UTC"),
        catchup=catchup.get("policy", defaults.catchup),
        window=parse_duration(catchup["window"]) if "window" in catchup else defaults.window,
        overlap=spec.get("overlap", defaults.overlap),
        jitter=parse_duration(spec["jitter"]) if "jitter" in spec else 0.0,
    )


def _trigger(spec: dict[str, Any]) -> Trigger:
    conditions: list[Condition] = []
    for dotted, test in spec.get("data", {}).items():
        path = tuple(dotted.split("."))
        operators = test if isinstance(test, dict) else {"eq": test}
        for op, value in operators.items():
            conditions.append(Condition(path, cast(Comparison, op), value))
    batch = _batching(spec["batch"]) if "batch" in spec else None
    return Trigger(
        spec["type"],
        spec.get("source"),
        spec.get("subject"),
        tuple(conditions),
        batch,
        spec.get("id") or _derived_id(spec),
    )


def _derived_id(spec: dict[str, Any]) -> str:
    """A trigger's id from what it matches and its batching key: stable across edits of
    anything else (its position, its window sizes and times)."""
    matches = {name: spec.get(name) for name in ("type", "source", "subject", "data")}
    matches["key"] = spec.get("batch", {}).get("key")
    digest = hashlib.sha256(orjson.dumps(matches, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return "t-" + digest[:16]


def _identified(triggers: list[Trigger]) -> tuple[Trigger, ...]:
    """Two triggers that match alike get their derived ids told apart by occurrence."""
    seen: dict[str, int] = {}
    unique = []
    for trigger in triggers:
        count = seen[trigger.id] = seen.get(trigger.id, 0) + 1
        unique.append(trigger if count == 1 else replace(trigger, id=f"{trigger.id}.{count}"))
    return tuple(unique)


def _batching(spec: dict[str, Any]) -> Batching:
    def seconds(name: str) -> float | None:
        return parse_duration(spec[name]) if name in spec else None

    return Batching(
        spec.get("max_events"), seconds("max_wait"), seconds("quiet_for"), spec.get("key")
    )


def _task(
    name: str, spec: dict[str, Any], services: tuple[str, ...], residency: str | None
) -> Task:
    given = spec.get("backoff", {})
    backoff = {
        "initial": parse_duration(given.get("initial", _DEFAULT_BACKOFF.initial)),
        "maximum": parse_duration(given.get("max", _DEFAULT_BACKOFF.maximum)),
        "multiplier": float(given.get("multiplier", _DEFAULT_BACKOFF.multiplier)),
    }
    timeout = spec.get("timeout")
    target: str | tuple[str, ...] | HttpCall
    if "python" in spec:
        kind, target = "python", spec["python"]
    elif "command" in spec:
        kind, target = "command", tuple(spec["command"])
    else:
        kind, target = "http", _http(spec["http"])
    return Task(
        name=name,
        kind=kind,  # type: ignore[arg-type]
        target=target,
        needs=tuple(spec.get("needs", ())),
        retries=int(spec.get("retries", 0)),
        backoff=Backoff(**backoff),
        timeout=None if timeout is None else parse_duration(timeout),
        route=spec.get("route", "default"),
        params=spec.get("with", {}),
        breaker=breaker(spec["breaker"]) if "breaker" in spec else None,
        needs_services=tuple(dict.fromkeys((*services, *spec.get("needs_services", ())))),
        residency=spec.get("residency", residency),
        outputs=tuple((o["namespace"], o["name"]) for o in spec.get("outputs", ())),
    )


def _http(spec: dict[str, Any]) -> HttpCall:
    sends = "json" in spec or "body" in spec
    return HttpCall(
        url=spec["url"],
        method=spec.get("method", "POST" if sends else "GET"),
        headers=tuple(spec.get("headers", {}).items()),
        json=spec.get("json"),
        body=spec.get("body"),
        has_json="json" in spec,
    )


def breaker(spec: dict[str, Any]) -> BreakerSpec:
    """A task's ``breaker:`` (checked: durations parse, cooldown <= max_cooldown)."""
    given: dict[str, Any] = {}
    for name in ("failures", "min_calls", "probes"):
        if name in spec:
            given[name] = int(spec[name])
    for name in ("rate", "growth"):
        if name in spec:
            given[name] = float(spec[name])
    for name in ("window", "cooldown", "max_cooldown"):
        if name in spec:
            given[name] = parse_duration(spec[name])
    if "cooldown" in given and "max_cooldown" not in given:
        given["max_cooldown"] = max(BreakerSpec().max_cooldown, given["cooldown"])
    return BreakerSpec(**given)
