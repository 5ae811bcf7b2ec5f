"""The config file (``headwater.yaml``): Kafka, pipelines, sources, routes and limits.

Read like a pipeline file (ruamel, line numbers kept), checked against
``headwater.schemas/config.schema.json`` and then against what a schema cannot say
(durations parse, fallback routes exist, no literal credential, each source's options
are its bridge's settings: ``source_problems``, given by the caller so this layer needs no
bridge). Every problem is a line ``file:line: field: message``.

Settings: the file's values, then every ``HEADWATER_*`` variable set in the environment
over them (a process's ``HEADWATER_INSTANCE`` is the usual one); the result goes through
``Settings.from_env``, so a value means the same in the file and in the environment.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from headwater.runner.durations import parse_duration
from headwater.runner.errors import PipelineErrors
from headwater.runner.model import checks
from headwater.runner.model.loader import line_of, plain
from headwater.runner.model.pipeline import Pipeline
from headwater.runner.model.schema_errors import DocPath, field_name, schema_problems

#: Seconds without a heartbeat of a route's workers before its tasks fail over.
FAILOVER_AFTER = 10.0
#: Seconds between a worker's heartbeats.
HEARTBEAT_EVERY = 2.0

SourceProblems = Callable[[str, Mapping[str, Any]], list[tuple[DocPath, str]]]


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """A route the config declares: where its workers run, what data they may hold, and
    the routes its tasks go to when it has no live worker."""

    name: str
    region: str | None = None
    residency: str | None = None
    fallback: tuple[str, ...] = ()
    #: the cloud its workers run in (for egress)
    cloud: str | None = None


@dataclass(frozen=True, slots=True)
class SourceSpec:
    name: str
    kind: str
    options: dict[str, Any]


@dataclass(frozen=True)
class Config:
    file: str
    #: ``HEADWATER_*`` values the file gives (the environment's win over them)
    env: dict[str, str]
    pipelines: tuple[Path, ...]
    sources: tuple[SourceSpec, ...]
    routes: tuple[RouteSpec, ...]
    failover_after: float = FAILOVER_AFTER
    heartbeat_every: float = HEARTBEAT_EVERY

    def route(self, name: str) -> RouteSpec:
        """The declared route ``name``, or one with no region, residency or fallback."""
        for route in self.routes:
            if route.name == name:
                return route
        return RouteSpec(name)


def load_config(path: Path, source_problems: SourceProblems | None = None) -> Config:
    """Read and check ``path``; raises ``PipelineErrors`` with every problem."""
    shown = str(path)
    try:
        root = YAML(typ="rt").load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PipelineErrors([f"{shown}:1: <file>: cannot read: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError:
        raise PipelineErrors([f"{shown}:1: <file>: cannot read: not UTF-8 text"]) from None
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(exc, "problem", None) or str(exc)
        raise PipelineErrors([f"{shown}:{line}: <yaml>: {problem}"]) from None
    data = plain(root) if root is not None else {}
    found = [(p.path, p.message) for p in schema_problems(_schema(), data)]
    if isinstance(data, dict):
        found += _problems(data, source_problems)
        found += list(checks.credential_problems(data))
    if found:
        lines = sorted({(line_of(root, at), field_name(at), message) for at, message in found})
        raise PipelineErrors([f"{shown}:{line}: {name}: {msg}" for line, name, msg in lines])
    assert isinstance(data, dict)
    return _build(data, path)


@functools.cache
def _schema() -> Draft202012Validator:
    schema = resources.files("headwater.schemas") / "config.schema.json"
    return Draft202012Validator(json.loads(schema.read_text(encoding="utf-8")))


_DURATIONS: tuple[DocPath, ...] = (
    ("kafka", "request_timeout"),
    ("limits", "task_timeout"),
    ("limits", "dedup_retention"),
    ("breaker", "cooldown"),
    ("health", "interval"),
    ("health", "timeout"),
    ("failover", "after"),
    ("failover", "heartbeat"),
    ("alerts", "every"),
)


def _at(data: Any, path: DocPath) -> Any:
    for step in path:
        if not isinstance(data, dict):
            return None
        data = data.get(step)
    return data


def _problems(
    data: dict[str, Any], source_problems: SourceProblems | None
) -> Iterator[tuple[DocPath, str]]:
    for where in _DURATIONS:
        value = _at(data, where)
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            try:
                if parse_duration(value) <= 0:
                    yield where, "must be longer than 0"
            except ValueError as exc:
                yield where, str(exc)
    routes = data.get("routes")
    names: dict[str, int] = {}
    for index, route in enumerate(routes if isinstance(routes, list) else ()):
        if isinstance(route, dict) and isinstance(route.get("name"), str):
            if route["name"] in names:
                first = names[route["name"]]
                yield ("routes", index, "name"), f'"{route["name"]}" is route {first} already'
            names.setdefault(route["name"], index)
    residency = {
        route["name"]: route.get("residency")
        for route in (routes if isinstance(routes, list) else ())
        if isinstance(route, dict) and isinstance(route.get("name"), str)
    }
    for index, route in enumerate(routes if isinstance(routes, list) else ()):
        fallback = route.get("fallback") if isinstance(route, dict) else None
        for position, other in enumerate(fallback if isinstance(fallback, list) else ()):
            at: DocPath = ("routes", index, "fallback", position)
            if other == route.get("name"):
                yield at, "a route cannot be its own fallback"
            elif isinstance(other, str) and other not in names:
                yield at, f'unknown route "{other}" (declare it under routes)'
            elif isinstance(other, str) and residency[other] != route.get("residency"):
                yield (
                    at,
                    (
                        f'route "{other}" has residency {residency[other] or "none"}, this route '
                        f"{route.get('residency') or 'none'}: a fallback keeps the residency"
                    ),
                )
    sources = data.get("sources")
    seen: set[str] = set()
    for index, source in enumerate(sources if isinstance(sources, list) else ()):
        if not isinstance(source, dict):
            continue
        name = source.get("name")
        if isinstance(name, str):
            if name in seen:
                yield ("sources", index, "name"), f'"{name}" names another source already'
            seen.add(name)
        kind, options = source.get("kind"), source.get("options", {})
        if source_problems is not None and isinstance(kind, str) and isinstance(options, dict):
            for path, message in source_problems(kind, options):
                yield ("sources", index, *path), message


#: Where each ``HEADWATER_*`` variable's value sits in the file (``Settings.from_env``
#: reads them; the environment's own win over these).
_VARIABLES: tuple[tuple[DocPath, str], ...] = (
    (("kafka", "bootstrap"), "HEADWATER_KAFKA"),
    (("kafka", "topic_prefix"), "HEADWATER_TOPIC_PREFIX"),
    (("kafka", "partitions"), "HEADWATER_KAFKA_PARTITIONS"),
    (("kafka", "replication"), "HEADWATER_KAFKA_REPLICATION"),
    (("kafka", "security_protocol"), "HEADWATER_KAFKA_SECURITY_PROTOCOL"),
    (("kafka", "sasl", "mechanism"), "HEADWATER_KAFKA_SASL_MECHANISM"),
    (("kafka", "sasl", "username"), "HEADWATER_KAFKA_USERNAME"),
    (("kafka", "sasl", "password"), "HEADWATER_KAFKA_PASSWORD"),
    (("kafka", "tls", "key_password"), "HEADWATER_KAFKA_TLS_KEY_PASSWORD"),
    (("limits", "max_pending_runs"), "HEADWATER_MAX_PENDING_RUNS"),
    (("limits", "max_pending_tasks"), "HEADWATER_MAX_PENDING_TASKS"),
    (("limits", "max_events_lag"), "HEADWATER_MAX_EVENTS_LAG"),
    (("limits", "worker_concurrency"), "HEADWATER_WORKER_CONCURRENCY"),
    (("limits", "task_timeout"), "HEADWATER_TASK_TIMEOUT"),
    (("limits", "dedup_retention"), "HEADWATER_DEDUP_RETENTION"),
    (("limits", "max_output_bytes"), "HEADWATER_MAX_OUTPUT_BYTES"),
    (("breaker", "failures"), "HEADWATER_BREAKER_FAILURES"),
    (("breaker", "cooldown"), "HEADWATER_BREAKER_COOLDOWN"),
    (("health", "interval"), "HEADWATER_HEALTH_INTERVAL"),
    (("health", "timeout"), "HEADWATER_HEALTH_TIMEOUT"),
    (("alerts", "webhook"), "HEADWATER_ALERT_WEBHOOK"),
    (("alerts", "every"), "HEADWATER_ALERT_EVERY"),
    (("lineage",), "HEADWATER_LINEAGE"),
    (("lineage", "url"), "HEADWATER_LINEAGE_URL"),
    (("lineage", "api_key"), "HEADWATER_LINEAGE_API_KEY"),
    (("standby",), "HEADWATER_STANDBY"),
)


def _build(data: dict[str, Any], path: Path) -> Config:
    env: dict[str, str] = {}
    for where, variable in _VARIABLES:
        value = _at(data, where)
        if isinstance(value, dict):  # a section given as a mapping (``lineage: {url}``)
            env[variable] = "1"
        elif value is not None:
            env[variable] = ("1" if value else "0") if isinstance(value, bool) else str(value)
    prices = (data.get("egress") or {}).get("prices") or {}
    if prices:  # a mapping in the file, one variable for the settings
        env["HEADWATER_EGRESS_PRICES"] = ",".join(f"{c}={p}" for c, p in prices.items())
    kafka = data.get("kafka", {})
    if "request_timeout" in kafka:
        millis = round(parse_duration(kafka["request_timeout"]) * 1000)
        env["HEADWATER_KAFKA_REQUEST_TIMEOUT_MS"] = str(millis)
    for name in ("ca_file", "cert_file", "key_file"):  # paths: relative to the file
        if name in kafka.get("tls", {}):
            env[f"HEADWATER_KAFKA_TLS_{name.upper()}"] = _relative(path, kafka["tls"][name])
    if "state_dir" in data:
        env["HEADWATER_STATE_DIR"] = _relative(path, data["state_dir"])
    given = data.get("pipelines", "pipelines")
    pipelines = tuple(
        Path(_relative(path, p)) for p in ([given] if isinstance(given, str) else given)
    )
    failover = data.get("failover", {})
    return Config(
        file=str(path),
        env=env,
        pipelines=pipelines,
        sources=tuple(
            SourceSpec(s["name"], s["kind"], dict(s.get("options", {})))
            for s in data.get("sources", ())
        ),
        routes=tuple(
            RouteSpec(
                r["name"],
                r.get("region"),
                r.get("residency"),
                tuple(r.get("fallback", ())),
                r.get("cloud"),
            )
            for r in data.get("routes", ())
        ),
        failover_after=parse_duration(failover.get("after", FAILOVER_AFTER)),
        heartbeat_every=parse_duration(failover.get("heartbeat", HEARTBEAT_EVERY)),
    )


def _relative(config: Path, given: str) -> str:
    """A path the file gives, relative to the file's folder unless absolute."""
    path = Path(given).expanduser()
    return str(path if path.is_absolute() else config.parent / path)


def residency_problems(pipelines: Iterable[Pipeline], routes: Mapping[str, Any]) -> list[str]:
    """Each task with a ``residency`` must be on a declared route of that residency
    (``routes``: name -> anything with ``residency``); its route's fallbacks keep it, as
    ``load_config`` checks."""
    out = []
    for pipeline in pipelines:
        for task in pipeline.tasks:
            if task.residency is None:
                continue
            route = routes.get(task.route)
            if route is None:
                out.append(
                    f"{pipeline.file}: tasks.{task.name}.residency: {task.residency}, but its "
                    f"route {task.route!r} is not declared in the config file (declare it "
                    f"with residency: {task.residency})"
                )
            elif route.residency != task.residency:
                out.append(
                    f"{pipeline.file}: tasks.{task.name}.residency: {task.residency}, but its "
                    f"route {task.route!r} has residency {route.residency or 'none'}"
                )
    return out
