"""Trigger matching: which pipelines an event starts. Pure, no I/O.

``TriggerIndex`` plans, once per event type, which triggers can match it, so an event tests
only those. A pipeline is returned at most once per event, with the first of its triggers
that matched.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, NamedTuple

import orjson

from headwater.runner.envelope import CloudEvent
from headwater.runner.model.pipeline import Condition, Pipeline, Trigger

_GLOB_CHARS = frozenset("*?[")
MISSING = object()


def is_glob(pattern: str) -> bool:
    return not _GLOB_CHARS.isdisjoint(pattern)


def lookup(data: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        else:
            return MISSING
    return data


#: A key value longer than this is kept as its SHA-256 (a group's or window's key is a
#: Kafka key and a name: it stays small).
KEY_CHARS = 200


def key_text(value: Any) -> str:
    """An event field's value as a grouping key: itself if a string, else its JSON; a
    text over ``KEY_CHARS`` as ``sha256:<hex>``."""
    try:
        text = value if isinstance(value, str) else orjson.dumps(value).decode()
    except TypeError:  # e.g. an integer beyond 64 bits (orjson's error is a TypeError)
        text = str(value)
    if len(text) > KEY_CHARS:
        text = "sha256:" + hashlib.sha256(text.encode()).hexdigest()
    return text


def condition_holds(condition: Condition, data: Any) -> bool:
    """Whether ``data`` satisfies one condition; a type mismatch is simply no match."""
    actual = lookup(data, condition.path)
    expected = condition.value
    if condition.op == "exists":
        return (actual is not MISSING) == bool(expected)
    if actual is MISSING:
        return False
    try:
        match condition.op:
            case "eq":
                return bool(actual == expected)
            case "ne":
                return bool(actual != expected)
            case "gt":
                return bool(actual > expected)
            case "gte":
                return bool(actual >= expected)
            case "lt":
                return bool(actual < expected)
            case "lte":
                return bool(actual <= expected)
            case "in":
                return actual in expected
            case "glob":
                return isinstance(actual, str) and fnmatchcase(actual, str(expected))
    except TypeError:
        return False
    return False


def trigger_matches(trigger: Trigger, event: CloudEvent) -> bool:
    return (
        _text_test(trigger.type)(event.type)
        and _text_test(trigger.source)(event.source)
        and _text_test(trigger.subject)(event.subject)
        and all(condition_holds(c, event.data) for c in trigger.conditions)
    )


#: The types of the completion events the control processor publishes (``runs.completion``).
COMPLETION_TYPES = ("headwater.run.succeeded", "headwater.run.failed")
COMPLETION_SOURCE_PREFIX = "/headwater/pipelines/"


def completion_trigger(trigger: Trigger) -> bool:
    """Whether ``trigger`` can match a pipeline's completion event."""
    return any(_text_test(trigger.type)(kind) for kind in COMPLETION_TYPES)


def triggered_by(trigger: Trigger, upstream: str) -> bool:
    """Whether ``trigger`` can match a completion of pipeline ``upstream``: by its type,
    subject, source and its conditions on ``data.pipeline`` (the others depend on the
    run, so a cycle only they would break is still one)."""
    named = {"pipeline": upstream}
    return (
        completion_trigger(trigger)
        and _text_test(trigger.subject)(upstream)
        and _text_test(trigger.source)(COMPLETION_SOURCE_PREFIX + upstream)
        and all(condition_holds(c, named) for c in trigger.conditions if c.path == ("pipeline",))
    )


def explain(trigger: Trigger, event: CloudEvent) -> str | None:
    """Why ``trigger`` does not match ``event``: its first filter that fails, with the
    value it saw (``None``: it matches). The same tests as ``trigger_matches``."""
    for name, pattern, actual in (
        ("type", trigger.type, event.type),
        ("source", trigger.source, event.source),
        ("subject", trigger.subject, event.subject),
    ):
        if not _text_test(pattern)(actual):
            seen = "absent" if actual is None else f'"{actual}"'
            how = "match" if pattern is not None and is_glob(pattern) else "equal"
            return f'{name} {seen} does not {how} "{pattern}"'
    for condition in trigger.conditions:
        if not condition_holds(condition, event.data):
            path = "data." + ".".join(condition.path)
            actual = lookup(event.data, condition.path)
            seen = "absent" if actual is MISSING else _shown(actual)
            return f"{path} is {seen}, not {condition.op} {_shown(condition.value)}"
    return None


def _shown(value: Any) -> str:
    text = repr(value) if not isinstance(value, str) else f'"{value}"'
    return text if len(text) <= 80 else text[:77] + "..."


class Match(NamedTuple):
    pipeline: Pipeline
    position: int  # of the trigger in the pipeline's ``triggers``
    trigger: Trigger


@functools.lru_cache(maxsize=4096)
def _text_test(pattern: str | None) -> Callable[[str | None], bool]:
    """A test of a text attribute: anything (no pattern), a glob, or an exact string."""
    if pattern is None:
        return lambda value: True
    if is_glob(pattern):
        matches = re.compile(fnmatch.translate(pattern)).match
        return lambda value: value is not None and matches(value) is not None
    return lambda value: value == pattern


@dataclass
class _Filter:
    """The part of a trigger after its type, shared by every trigger that has the same one
    (100 pipelines on one filter test it once per event)."""

    source: Callable[[str | None], bool]
    subject: Callable[[str | None], bool]
    conditions: tuple[Condition, ...]
    matches: list[tuple[int, Match]] = field(default_factory=list)  # (rank, match)

    def holds(self, event: CloudEvent) -> bool:
        return (
            self.source(event.source)
            and self.subject(event.subject)
            and all(condition_holds(c, event.data) for c in self.conditions)
        )


@dataclass
class _Plan:
    """The filters to test for one event type: those with an exact ``subject`` are looked
    up by the event's subject, the others are all tested."""

    by_subject: dict[str, list[_Filter]] = field(default_factory=dict)
    others: list[_Filter] = field(default_factory=list)


class TriggerIndex:
    """Finds the pipelines an event triggers without scanning every pipeline.

    For each event type seen, a plan is built once (and kept, up to ``PLANS`` types): the
    triggers whose type is that type or a glob matching it, grouped by their remaining
    filter, and indexed by exact subject. An event then tests only the filters that could
    match it, each once.
    """

    PLANS = 10_000

    def __init__(self, pipelines: Iterable[Pipeline]) -> None:
        self._triggers = [
            Match(pipeline, position, trigger)
            for pipeline in pipelines
            for position, trigger in enumerate(pipeline.triggers)
        ]
        self._plans: dict[str, _Plan] = {}

    def matches(self, event: CloudEvent) -> list[Match]:
        """Each pipeline ``event`` triggers, with the first of its triggers that matched,
        in the order the pipelines were given."""
        plan = self._plans.get(event.type) or self._plan(event.type)
        found: list[tuple[int, Match]] = []
        if event.subject is not None:
            for candidate in plan.by_subject.get(event.subject, ()):
                if candidate.holds(event):
                    found += candidate.matches
        for candidate in plan.others:
            if candidate.holds(event):
                found += candidate.matches
        if len(found) < 2:
            return [match for _, match in found]
        first: dict[str, tuple[int, Match]] = {}
        for rank, match in sorted(found, key=lambda ranked: ranked[0]):
            first.setdefault(match.pipeline.name, (rank, match))
        return [match for _, match in first.values()]

    def match(self, event: CloudEvent) -> list[Pipeline]:
        return [m.pipeline for m in self.matches(event)]

    def _plan(self, event_type: str) -> _Plan:
        plan = _Plan()
        filters: dict[tuple[Any, ...], _Filter] = {}
        for rank, match in enumerate(self._triggers):
            trigger = match.trigger
            if not _text_test(trigger.type)(event_type):
                continue
            key = (trigger.source, trigger.subject, repr(trigger.conditions))
            if key not in filters:
                exact_subject = trigger.subject is not None and not is_glob(trigger.subject)
                filters[key] = _Filter(
                    _text_test(trigger.source),
                    (lambda value: True) if exact_subject else _text_test(trigger.subject),
                    trigger.conditions,
                )
                if exact_subject:
                    plan.by_subject.setdefault(str(trigger.subject), []).append(filters[key])
                else:
                    plan.others.append(filters[key])
            filters[key].matches.append((rank, match))
        if len(self._plans) >= self.PLANS:
            self._plans.clear()  # a stream of ever-new types: never grow without bound
        self._plans[event_type] = plan
        return plan
