"""What a pipeline file's schema cannot say, checked on its plain data. Pure.

Each check yields ``(path, message)`` for every problem it finds; the loader turns the
path into a line of the file. Checked here: ``needs`` name other existing tasks, the
tasks form a DAG (every cycle named), durations parse and are not zero where that makes
no sense, a batching window can close, and no string is a literal credential.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from zoneinfo import ZoneInfo

from headwater.runner.durations import parse_duration
from headwater.runner.flow.health import parse_service
from headwater.runner.flow.schedule import check_cron
from headwater.runner.model.schema_errors import DocPath
from headwater.runner.secrets import credential_problem


def credential_problems(
    node: Any, at: DocPath = (), key: str = ""
) -> Iterator[tuple[DocPath, str]]:
    """Literal credentials among the string values, ``key`` being the nearest mapping key."""
    if isinstance(node, dict):
        for name, value in node.items():
            yield from credential_problems(value, (*at, name), name)
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from credential_problems(item, (*at, index), key)
    elif isinstance(node, str):
        problem = credential_problem(key, node)
        if problem is not None:
            yield at, problem


def _needs_lists(tasks: dict[str, Any]) -> Iterator[tuple[str, list[Any]]]:
    for name, task in tasks.items():
        if isinstance(task, dict) and isinstance(task.get("needs"), list):
            yield name, task["needs"]


def needs_problems(tasks: dict[str, Any]) -> Iterator[tuple[DocPath, str]]:
    for name, needs in _needs_lists(tasks):
        for index, need in enumerate(needs):
            at: DocPath = ("tasks", name, "needs", index)
            if need == name:
                yield at, "a task cannot need itself"
            elif isinstance(need, str) and need not in tasks:
                yield at, f'unknown task "{need}"'


def duration_problems(tasks: dict[str, Any]) -> Iterator[tuple[DocPath, str]]:
    for name, task in tasks.items():
        if not isinstance(task, dict):
            continue
        backoff = task.get("backoff")
        places: list[tuple[DocPath, Any]] = [(("timeout",), task.get("timeout"))]
        if isinstance(backoff, dict):
            places += [(("backoff", key), backoff.get(key)) for key in ("initial", "max")]
        breaker = task.get("breaker")
        if isinstance(breaker, dict):
            places += [(("breaker", k), breaker.get(k)) for k in _BREAKER_DURATIONS]
        for where, value in places:
            if isinstance(value, str | int | float) and not isinstance(value, bool):
                try:
                    seconds = parse_duration(value)
                except ValueError as exc:
                    yield ("tasks", name, *where), str(exc)
                    continue
                if where[0] == "breaker" and seconds <= 0:
                    yield ("tasks", name, *where), "must be longer than 0"
        if isinstance(breaker, dict):
            yield from _breaker_problems(name, breaker)


_BREAKER_DURATIONS = ("window", "cooldown", "max_cooldown")


def _breaker_problems(task: str, breaker: dict[str, Any]) -> Iterator[tuple[DocPath, str]]:
    try:
        cooldown = parse_duration(breaker.get("cooldown", 30.0))
        most = parse_duration(breaker["max_cooldown"]) if "max_cooldown" in breaker else None
    except (ValueError, TypeError):
        return  # reported above, or by the schema
    if most is not None and most < cooldown:
        yield (
            ("tasks", task, "breaker", "max_cooldown"),
            f"must be at least the cooldown ({cooldown:g}s)",
        )


def pipeline_problems(data: dict[str, Any]) -> Iterator[tuple[DocPath, str]]:
    """The pipeline's own ``timeout`` and ``throttle.period``: durations above 0."""
    throttle = data.get("throttle")
    places: list[tuple[DocPath, Any]] = [(("timeout",), data.get("timeout"))]
    if isinstance(throttle, dict):
        places.append((("throttle", "period"), throttle.get("period")))
    for where, value in places:
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            try:
                seconds = parse_duration(value)
            except ValueError as exc:
                yield where, str(exc)
                continue
            if seconds <= 0:
                yield where, "must be longer than 0"


def schedule_problems(data: dict[str, Any]) -> Iterator[tuple[DocPath, str]]:
    """Something starts runs (``triggers`` or ``schedule``); a schedule has ``cron`` or
    ``every`` (not both), a cron expression and timezone that exist, a period of at least
    a second and a jitter shorter than it."""
    schedule = data.get("schedule")
    if schedule is None and not data.get("triggers"):
        if "triggers" in data:
            yield ("triggers",), "is empty and there is no schedule: nothing would start a run"
        else:
            yield (), "needs triggers or a schedule (or both)"
    if not isinstance(schedule, dict):
        return
    at: DocPath = ("schedule",)
    cron, every = schedule.get("cron"), schedule.get("every")
    if (cron is None) == (every is None):
        yield at, "needs either cron or every (not both)"
    if isinstance(cron, str):
        problem = check_cron(cron)
        if problem is not None:
            yield (*at, "cron"), problem
    zone = schedule.get("timezone")
    if isinstance(zone, str):
        if every is not None:
            yield (*at, "timezone"), "applies to cron only (every counts from the Unix epoch)"
        elif not _timezone(zone):
            known = "an IANA name such as Europe/Paris"
            yield (*at, "timezone"), f"unknown timezone {zone!r} ({known})"
    seconds: dict[str, float] = {}
    places = (("every",), ("jitter",), ("catchup", "window"))
    for where in places:
        value: Any = schedule
        for step in where:
            value = value.get(step) if isinstance(value, dict) else None
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            try:
                seconds[where[-1]] = parse_duration(value)
            except ValueError as exc:
                yield (*at, *where), str(exc)
    if seconds.get("every", 1.0) < 1.0:
        yield (*at, "every"), "must be at least 1s"
    period = seconds.get("every")
    if period is not None and seconds.get("jitter", 0.0) >= period:
        yield (*at, "jitter"), f"must be shorter than the period ({period:g}s)"
    if seconds.get("jitter", 0.0) > 3600.0:
        yield (*at, "jitter"), "must be at most 1h"


def join_problems(data: dict[str, Any]) -> Iterator[tuple[DocPath, str]]:
    """A join lists ``all`` or ``any`` + ``of``; each id names a trigger of the file (by
    its ``id:``) that does not batch; ``any`` is at most the count listed; ``within`` is
    a duration above 0."""
    join = data.get("join")
    if not isinstance(join, dict):
        return
    at: DocPath = ("join",)
    listed = join.get("all") if "all" in join else join.get("of")
    if ("all" in join) == ("of" in join) or ("any" in join) != ("of" in join):
        yield at, "needs either all: [ids] or any: N with of: [ids]"
    if isinstance(join.get("any"), int) and isinstance(listed, list) and join["any"] > len(listed):
        yield (*at, "any"), f"must be at most the {len(listed)} triggers listed in of"
    triggers = data.get("triggers")
    ids: dict[str, dict[str, Any]] = {}
    for trigger in triggers if isinstance(triggers, list) else ():
        if isinstance(trigger, dict) and isinstance(trigger.get("id"), str):
            ids[trigger["id"]] = trigger
    name = "all" if "all" in join else "of"
    for index, given in enumerate(listed if isinstance(listed, list) else ()):
        if not isinstance(given, str):
            continue
        if given not in ids:
            yield (*at, name, index), f'no trigger has id "{given}" (give it one with id:)'
        elif "batch" in ids[given]:
            yield (*at, name, index), f'trigger "{given}" batches: a joined trigger cannot'
    within = join.get("within")
    if isinstance(within, str | int | float) and not isinstance(within, bool):
        try:
            if parse_duration(within) <= 0:
                yield (*at, "within"), "must be longer than 0"
        except ValueError as exc:
            yield (*at, "within"), str(exc)


def http_problems(tasks: dict[str, Any]) -> Iterator[tuple[DocPath, str]]:
    """An ``http:`` task sends ``json`` or ``body``, not both, and not with GET/HEAD; its
    URL holds no literal user:password (a secret reference instead)."""
    for name, task in tasks.items():
        http = task.get("http") if isinstance(task, dict) else None
        if not isinstance(http, dict):
            continue
        at: DocPath = ("tasks", name, "http")
        if "json" in http and "body" in http:
            yield at, "give json or body, not both"
        if http.get("method") in ("GET", "HEAD") and ("json" in http or "body" in http):
            yield (*at, "method"), f"a {http['method']} request carries no json or body"
        url = http.get("url")
        if isinstance(url, str) and "${" not in url.split("@")[0]:
            authority = url.split("://", 1)[-1].split("/", 1)[0]
            if "@" in authority and ":" in authority.split("@")[0]:
                yield (*at, "url"), "holds a password: use a secret reference such as ${env:URL}"


def _timezone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except Exception:  # noqa: BLE001 - ZoneInfoNotFoundError, ValueError for odd keys
        return False
    return True


def service_problems(data: dict[str, Any]) -> Iterator[tuple[DocPath, str]]:
    """Each ``needs_services`` entry (the pipeline's and each task's) must parse."""
    places: list[tuple[DocPath, Any]] = [(("needs_services",), data.get("needs_services"))]
    tasks = data.get("tasks")
    if isinstance(tasks, dict):
        places += [
            (("tasks", name, "needs_services"), task.get("needs_services"))
            for name, task in tasks.items()
            if isinstance(task, dict)
        ]
    for at, services in places:
        for index, text in enumerate(services if isinstance(services, list) else ()):
            if isinstance(text, str):
                try:
                    parse_service(text)
                except ValueError as exc:
                    yield (*at, index), str(exc)


def trigger_id_problems(triggers: list[Any]) -> Iterator[tuple[DocPath, str]]:
    """Two triggers of one pipeline may not share an ``id``."""
    first: dict[str, int] = {}
    for index, trigger in enumerate(triggers):
        given = trigger.get("id") if isinstance(trigger, dict) else None
        if not isinstance(given, str):
            continue
        if given in first:
            yield ("triggers", index, "id"), f"{given!r} is already trigger {first[given]}'s id"
        else:
            first[given] = index


def batch_problems(triggers: list[Any]) -> Iterator[tuple[DocPath, str]]:
    for index, trigger in enumerate(triggers):
        batch = trigger.get("batch") if isinstance(trigger, dict) else None
        if not isinstance(batch, dict):
            continue
        if "max_wait" not in batch and "quiet_for" not in batch:
            yield (
                ("triggers", index, "batch"),
                "needs max_wait or quiet_for, so that every window closes",
            )
        for name in ("max_wait", "quiet_for"):
            value = batch.get(name)
            if isinstance(value, str | int | float) and not isinstance(value, bool):
                try:
                    seconds = parse_duration(value)
                except ValueError as exc:
                    yield ("triggers", index, "batch", name), str(exc)
                    continue
                if seconds == 0:
                    yield ("triggers", index, "batch", name), "must be more than 0"


def _edges(tasks: dict[str, Any]) -> dict[str, list[str]]:
    """Task -> the tasks it needs, keeping only needs that name another existing task."""
    edges: dict[str, list[str]] = {name: [] for name in tasks}
    for name, needs in _needs_lists(tasks):
        edges[name] = [n for n in needs if isinstance(n, str) and n in tasks and n != name]
    return edges


def cycles(tasks: dict[str, Any]) -> list[list[str]]:
    """Each cycle found by a depth-first walk in file order, as ``[a, b, a]``."""
    edges = _edges(tasks)
    state: dict[str, str] = {}  # "open" while on the walk's stack, then "done"
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(name: str) -> None:
        state[name] = "open"
        stack.append(name)
        for need in edges[name]:
            if state.get(need) == "open":
                cycles.append([*stack[stack.index(need) :], need])
            elif need not in state:
                visit(need)
        stack.pop()
        state[name] = "done"

    for name in edges:
        if name not in state:
            visit(name)
    return cycles


def graph_cycles(edges: dict[str, list[tuple[str, int]]]) -> list[tuple[list[str], int]]:
    """Each cycle of a graph whose edges carry a label (node -> [(next, label)]), found
    by a depth-first walk in order, as ``([a, b, a], the label of a's edge)``: a
    pipeline, the pipelines whose completions trigger it in turn, back to it."""
    state: dict[str, str] = {}
    stack: list[tuple[str, int]] = []
    found: list[tuple[list[str], int]] = []

    def visit(name: str) -> None:
        state[name] = "open"
        for following, label in edges.get(name, ()):
            stack.append((name, label))
            if state.get(following) == "open":
                start = next(i for i, (node, _) in enumerate(stack) if node == following)
                walk = stack[start:]
                found.append(([node for node, _ in walk] + [following], walk[0][1]))
            elif following not in state:
                visit(following)
            stack.pop()
        state[name] = "done"

    for name in edges:
        if name not in state:
            visit(name)
    return found
