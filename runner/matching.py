"""Trigger matching: which pipelines an event starts. Pure, no I/O.

Triggers are indexed by their exact ``type``; only triggers whose type is a glob are
scanned for every event. A pipeline is returned at most once per event, whichever of its
triggers matched first.
"""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatchcase
from typing import Any, NamedTuple

from headwater.runner.envelope import CloudEvent
from headwater.runner.pipeline import Condition, Pipeline, Trigger

_GLOB_CHARS = frozenset("*?[")
MISSING = object()


def is_glob(pattern: str) -> bool:
    return not _GLOB_CHARS.isdisjoint(pattern)


def _text_matches(pattern: str | None, value: str | None) -> bool:
    if pattern is None:
        return True
    if value is None:
        return False
    return fnmatchcase(value, pattern) if is_glob(pattern) else value == pattern


def lookup(data: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        else:
            return MISSING
    return data


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
        _text_matches(trigger.type, event.type)
        and _text_matches(trigger.source, event.source)
        and _text_matches(trigger.subject, event.subject)
        and all(condition_holds(c, event.data) for c in trigger.conditions)
    )


class Match(NamedTuple):
    pipeline: Pipeline
    position: int  # of the trigger in the pipeline's ``triggers``
    trigger: Trigger


class TriggerIndex:
    """Finds the pipelines an event triggers without scanning every pipeline."""

    def __init__(self, pipelines: Iterable[Pipeline]) -> None:
        self._by_type: dict[str, list[Match]] = {}
        self._globbed: list[Match] = []
        for pipeline in pipelines:
            for position, trigger in enumerate(pipeline.triggers):
                candidate = Match(pipeline, position, trigger)
                if is_glob(trigger.type):
                    self._globbed.append(candidate)
                else:
                    self._by_type.setdefault(trigger.type, []).append(candidate)

    def matches(self, event: CloudEvent) -> list[Match]:
        """Each pipeline ``event`` triggers, with the first of its triggers that matched."""
        matched: dict[str, Match] = {}
        for candidates in (self._by_type.get(event.type, ()), self._globbed):
            for candidate in candidates:
                name = candidate.pipeline.name
                if name not in matched and trigger_matches(candidate.trigger, event):
                    matched[name] = candidate
        return list(matched.values())

    def match(self, event: CloudEvent) -> list[Pipeline]:
        return [m.pipeline for m in self.matches(event)]
