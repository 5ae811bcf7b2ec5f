"""Wire formats of the runner's own topics: control messages, task requests, DLQ records.

All are JSON (orjson) keyed by run id, except batching messages (keyed by window) and
DLQ records. ``decode_control`` raises ``BadMessage`` naming the field that is wrong, so a
corrupt control record goes to the DLQ instead of stopping the run table.
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from headwater.runner.envelope import now_iso
from headwater.runner.errors import BadMessage

# --- control messages: the run table's only input ---------------------------------------


@dataclass(frozen=True, slots=True)
class RunRequested:
    run_id: str
    pipeline: str
    event: dict[str, Any]


@dataclass(frozen=True, slots=True)
class TaskFinished:
    run_id: str
    task: str
    attempt: int
    ok: bool
    output: Any = None
    error: str | None = None
    started_at: float = 0.0
    finished_at: float = 0.0
    #: the failure is final: no retry (an HTTP 4xx, ``headwater.Permanent``)
    final: bool = False
    #: where the attempt ran: route, region, instance (and ``for_route`` on failover)
    ran_on: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class RetryDue:
    run_id: str
    task: str
    attempt: int


@dataclass(frozen=True, slots=True)
class RunCancelled:
    """Someone asked to cancel the run (``headwater run cancel``): its unfinished tasks
    end ``cancelled``, its running attempts are told to stop, it ends
    ``headwater.run.cancelled``. For a run already finished, it changes nothing."""

    run_id: str
    reason: str


ControlMessage = RunRequested | TaskFinished | RetryDue


@dataclass(frozen=True, slots=True)
class MarkersDue:
    """Time to delete the expired markers of finished runs in one control partition (a
    timer of the control processor; written to that partition, so it is applied in order
    with the partition's other messages, in its transaction)."""

    partition: int


@dataclass(frozen=True, slots=True)
class EventsBatched:
    """Events one trigger matched, in order, for one window key. ``trigger`` is the
    trigger's id (its position in records written before triggers had ids)."""

    window: str
    pipeline: str
    trigger: str | int
    key: str | None
    events: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class EventsJoined:
    """Events one trigger of a pipeline's ``join`` matched, in order, for one key value
    (``join``: the join's key, as ``runs.joins.join_key``)."""

    join: str
    pipeline: str
    trigger: str
    key: str
    events: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class JoinDue:
    """The time of the join that opened at ``opened_at`` is up."""

    join: str
    opened_at: float


@dataclass(frozen=True, slots=True)
class WindowDue:
    """A timer armed for the window that opened at ``opened_at`` went off."""

    window: str
    opened_at: float


@dataclass(frozen=True, slots=True)
class RouteHeld:
    """A worker of ``route`` holds task requests without running them (a circuit breaker
    of the route is open, or a service its tasks need is down): the route's dispatched
    attempts are waiting, not lost. Written to every control partition every few seconds
    while it lasts (``HOLD_NOTICE_EVERY``); nothing of it is kept in the changelog."""

    route: str
    reason: str


@dataclass(frozen=True, slots=True)
class RunDue:
    """The pipeline's ``timeout`` of a run has passed (a timer of its partition): a run
    still going, waiting or not, fails."""

    run_id: str


@dataclass(frozen=True, slots=True)
class FlowDue:
    """A group of runs waiting for ``throttle`` may start one now (a timer of its
    partition; ``key`` is the group's key value)."""

    pipeline: str
    key: str | None


@dataclass(frozen=True, slots=True)
class ScheduleDue:
    """Time ``at`` has come for the pipeline's ``schedule`` (its id): the ticks due by
    then start their runs (``runs.schedules``). Written by every process's scheduler at
    each tick and when it starts, keyed by the pipeline's schedule key, so one partition
    owns the schedule; a tick already considered starts nothing again."""

    pipeline: str
    schedule: str
    at: float


#: Seconds between a holding worker's ``RouteHeld`` notices.
HOLD_NOTICE_EVERY = 5.0

Control = (
    ControlMessage
    | EventsBatched
    | WindowDue
    | MarkersDue
    | RouteHeld
    | RunDue
    | FlowDue
    | ScheduleDue
    | EventsJoined
    | JoinDue
    | RunCancelled
)
#: How much of a dead-lettered payload its DLQ entry keeps.
DLQ_PAYLOAD_BYTES = 256 * 1024
#: The control messages a timer of the control processor writes.
Due = RetryDue | WindowDue | MarkersDue | RunDue | FlowDue | ScheduleDue | JoinDue
_KINDS: dict[str, type[Control]] = {
    "run.requested": RunRequested,
    "task.finished": TaskFinished,
    "retry.due": RetryDue,
    "route.held": RouteHeld,
    "events.batched": EventsBatched,
    "window.due": WindowDue,
    "markers.due": MarkersDue,
    "run.due": RunDue,
    "flow.due": FlowDue,
    "schedule.due": ScheduleDue,
    "events.joined": EventsJoined,
    "join.due": JoinDue,
    "run.cancelled": RunCancelled,
}
_KIND_OF = {cls: kind for kind, cls in _KINDS.items()}
_FIELDS = {cls: tuple(f.name for f in dataclasses.fields(cls)) for cls in _KINDS.values()}
#: The declared type of every field of every control message, as written in its class.
_TYPES = {cls: {f.name: str(f.type) for f in dataclasses.fields(cls)} for cls in _KINDS.values()}


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _objects(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, dict) for item in value)


#: Each declared field type: the test of a decoded JSON value, and its name in an error.
_JSON_TYPES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "Any": (lambda value: True, "any JSON value"),
    "int": (_integer, "an integer"),
    "float": (_number, "a number"),
    "list[dict[str, Any]]": (_objects, "a list of objects"),
    "str": (lambda value: isinstance(value, str), "a string"),
    "bool": (lambda value: isinstance(value, bool), "true or false"),
    "str | None": (lambda value: value is None or isinstance(value, str), "a string or null"),
    "str | int": (lambda value: isinstance(value, str) or _integer(value), "a string or integer"),
    "dict[str, Any]": (lambda value: isinstance(value, dict), "an object"),
    "dict[str, Any] | None": (
        lambda value: value is None or isinstance(value, dict),
        "an object or null",
    ),
}


def concerns(message: Control) -> dict[str, str]:
    """What a control message is about, for its DLQ entry: its window or its run."""
    if isinstance(message, EventsBatched | WindowDue):
        return {"window": message.window}
    if isinstance(message, EventsJoined | JoinDue):
        return {"join": message.join}
    if isinstance(message, MarkersDue):
        return {}
    if isinstance(message, RouteHeld):
        return {"route": message.route}
    if isinstance(message, FlowDue | ScheduleDue):
        return {"pipeline": message.pipeline}
    return {"run_id": message.run_id}


def encode_control(message: Control) -> bytes:
    # A shallow copy of the fields: ``asdict`` would deep-copy the event a message carries.
    fields = {name: getattr(message, name) for name in _FIELDS[type(message)]}
    return orjson.dumps({"kind": _KIND_OF[type(message)], **fields})


def _json_object(value: bytes | None, what: str) -> dict[str, Any]:
    try:
        obj = orjson.loads(value or b"")
    except orjson.JSONDecodeError as exc:
        raise BadMessage(f"{what} is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise BadMessage(f"{what} must be a JSON object")
    return obj


def decode_control(value: bytes | None) -> Control:
    obj = _json_object(value, "control message")
    kind = obj.pop("kind", None)
    cls = _KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise BadMessage(f"control message has unknown kind; expected one of {sorted(_KINDS)}")
    _check_fields(f"control message {kind}", obj, _TYPES[cls])
    try:
        return cls(**obj)
    except TypeError as exc:
        raise BadMessage(f"control message {kind}: {exc}") from None


def _check_fields(what: str, obj: dict[str, Any], types: dict[str, str]) -> None:
    """Every field has the JSON type its message declares (orjson gives no other)."""
    for name, value in obj.items():
        expected = types.get(name)
        if expected is None:
            raise BadMessage(f"{what}: unexpected field {name!r}")
        holds, called = _JSON_TYPES[expected]
        if not holds(value):
            raise BadMessage(f"{what}: field {name!r} must be {called}")


def encode_task_request(
    run_id: str,
    pipeline: str,
    task: str,
    attempt: int,
    event: dict[str, Any],
    upstream: dict[str, Any],
    key: str | None = None,
) -> bytes:
    """A task request; ``key``: the Kafka key of its result, when not the run id (the
    run's control messages are keyed by its group: ``runs.flow``)."""
    request = {
        "run_id": run_id,
        "pipeline": pipeline,
        "task": task,
        "attempt": attempt,
        "event": event,
        "upstream": upstream,
    }
    if key is not None:
        request["key"] = key
    return orjson.dumps(request)


def decode_task_request(value: bytes | None) -> dict[str, Any]:
    obj = _json_object(value, "task request")
    for name in _REQUEST_FIELDS:
        if name not in obj:
            raise BadMessage(f"task request is missing {name!r}")
    known = {name: obj[name] for name in _REQUEST_FIELDS}
    _check_fields("task request", known, _REQUEST_FIELDS)
    return dict(obj)


_REQUEST_FIELDS = {
    "run_id": "str",
    "pipeline": "str",
    "task": "str",
    "attempt": "int",
    "event": "dict[str, Any]",
    "upstream": "dict[str, Any]",
}


def record_origin(record: Any, **context: str) -> dict[str, Any]:
    """Where a DLQ entry about a Kafka record came from: its topic, partition and offset,
    and what it was about (``run_id``, ``window``). Entries about a source message name the
    bridge, the source and the message id instead (the pump)."""
    return {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        **context,
    }


def dlq_record(
    reason: str,
    origin: dict[str, Any],
    payload: bytes | None,
    headers: Sequence[tuple[str, bytes | None]] | None = None,
    redrive: dict[str, Any] | None = None,
) -> bytes:
    """A DLQ entry: why, where from (source + message id, or topic/partition/offset), what.

    The payload is kept as text when it is UTF-8, base64 otherwise; one over
    ``DLQ_PAYLOAD_BYTES`` is cut to its head (``payload_size`` says how big it was).
    """
    record: dict[str, Any] = {"reason": reason, "origin": origin, "at": now_iso()}
    if redrive is not None:  # what ``headwater dlq redrive`` does with it
        record["redrive"] = redrive
    raw = payload or b""
    if len(raw) > DLQ_PAYLOAD_BYTES:  # the entry must fit in a record: keep the head
        record["payload_size"] = len(raw)
        record["payload_truncated"] = True
        raw = raw[:DLQ_PAYLOAD_BYTES]
    try:
        record["payload"] = raw.decode("utf-8")
    except UnicodeDecodeError:
        record["payload_base64"] = base64.b64encode(raw).decode()
    if headers:
        record["headers"] = {
            k: None if v is None else bytes(v).decode("utf-8", "replace") for k, v in headers
        }
    return orjson.dumps(record)


def failed_run_record(run: Any, completion: dict[str, Any]) -> bytes:
    """The DLQ entry of a run that failed (a task's last attempt, its timeout...): the
    reason, the run, and its trigger event as the payload, so ``dlq redrive`` can ask
    for it again (under a redrive identity of its own)."""
    origin = {"component": "control", "run_id": run.run_id, "pipeline": run.pipeline}
    failed = [n for n, t in (completion.get("tasks") or {}).items() if t.get("status") == "failed"]
    if failed:
        origin["task"] = failed[0]
    reason = f"run failed: {completion.get('error') or run.status}"
    redrive = {"to": "control", "pipeline": run.pipeline}
    return dlq_record(reason, origin, orjson.dumps(run.event), redrive=redrive)
