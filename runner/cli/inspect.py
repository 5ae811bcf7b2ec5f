"""``headwater runs``, ``headwater run show ID`` and ``headwater dlq list|show``: what the
log says about runs and dead letters, read back from ``completions``, the run table's
changelog (``runs``: the runs still going) and ``dlq``."""

from __future__ import annotations

import argparse
import asyncio
import base64
import importlib
import sys
import time
from datetime import UTC, datetime
from typing import Any

import orjson

from headwater.bridges import registry
from headwater.bridges.base import Delivery
from headwater.bridges.mapping import to_cloudevents
from headwater.runner.cli.replay import _when
from headwater.runner.envelope import to_kafka
from headwater.runner.log import kafka
from headwater.runner.log.reader import read_now
from headwater.runner.log.records import RunCancelled, RunRequested, encode_control
from headwater.runner.replay import records_between, succeeded_events
from headwater.runner.runs.machine import run_id_for
from headwater.runner.settings import Settings

OUTPUT_CHARS = 400
#: The longest reason a cancel may give (it travels in the completion and to the workers).
REASON_CHARS = 2000


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    runs = commands.add_parser("runs", help="list runs: finished (completions) and running")
    runs.add_argument("--pipeline", default=None)
    runs.add_argument(
        "--status", choices=("running", "succeeded", "failed", "cancelled"), default=None
    )
    runs.add_argument("--since", type=_when, default=None, help="default: -24h")
    runs.add_argument("--json", action="store_true", help="one JSON object per line")
    runs.set_defaults(command=_runs)

    dlq = commands.add_parser("dlq", help="the dead-letter queue: list or show its records")
    dlq.add_argument("action", choices=("list", "show", "redrive"))
    dlq.add_argument("offset", nargs="*", type=int, help="show/redrive: the records' offsets")
    dlq.add_argument("--reason", default=None, help="only reasons containing this text")
    dlq.add_argument("--since", type=_when, default=None, help="default: -7d")
    dlq.add_argument("--dry-run", action="store_true", help="redrive: say what, do nothing")
    dlq.set_defaults(command=_dlq)


def show_run(run_id: str) -> int:
    """``headwater run show ID``."""
    settings = Settings.from_env()
    found = asyncio.run(_find_run(settings, run_id))
    if found is None:
        print(f"no run {run_id!r} in the completions or the run table", file=sys.stderr)
        return 1
    print(f"run {found['run_id']} of {found['pipeline']}: {found['status']}")
    trigger = found.get("trigger") or {}
    print(f"  trigger: {trigger.get('type')} {trigger.get('id')} from {trigger.get('source')}")
    for name in ("started_at", "finished_at", "duration_ms", "error"):
        if found.get(name) is not None:
            print(f"  {name}: {found[name]}")
    moved = found.get("egress")
    if moved and moved.get("bytes"):
        origin = moved.get("from") or {}
        cost = f", about ${moved['cost_usd']:.4f}" if moved.get("cost_usd") is not None else ""
        where = "/".join(str(v) for v in (origin.get("cloud"), origin.get("region")) if v)
        print(f"  egress: {moved['bytes']:,} bytes out of {where}{cost}")
    for name, task in (found.get("tasks") or {}).items():
        ran = task.get("ran_on") or {}
        where = f" on {ran.get('route')}/{ran.get('region')}/{ran.get('instance')}" if ran else ""
        attempts = task.get("attempts", task.get("attempt"))
        took = f", {task['duration_ms']} ms" if task.get("duration_ms") is not None else ""
        print(f"  task {name}: {task.get('status')}, {attempts} attempt(s){took}{where}")
        if task.get("error"):
            print(f"    error: {task['error']}")
        if task.get("output") is not None:
            print(f"    output: {_short(task['output'])}")
    return 0


def cancel_run(run_id: str, reason: str, wait: float) -> int:
    """``headwater run cancel ID``: ask the run's control partition to cancel it; wait up
    to ``wait`` seconds for its completion. 0: cancelled (or asked, if not waiting);
    1: no such running run, or it finished first."""
    settings = Settings.from_env()
    return asyncio.run(_cancel(settings, run_id, reason, wait))


async def _cancel(settings: Settings, run_id: str, reason: str, wait: float) -> int:
    if len(reason) > REASON_CHARS:
        print(f"--reason is {len(reason):,} characters; at most {REASON_CHARS:,}", file=sys.stderr)
        return 2
    located = await _in_table(settings, run_id)
    if located is None or located[1].get("status") != "running":
        finished = await _completion_of(settings, run_id)
        if finished is None and located is not None:  # its completion is not out yet
            finished = located[1]
        if finished is None:
            print(f"no run {run_id!r} in the completions or the run table", file=sys.stderr)
        else:
            print(f"run {run_id} already {finished['status']}: nothing to cancel", file=sys.stderr)
        return 1
    partition, _ = located
    producer = kafka.producer(settings)
    asked_at = time.time()
    async with kafka.started(producer):
        message = encode_control(RunCancelled(run_id, reason))
        topic = settings.topics.control
        await producer.send_and_wait(topic, message, key=run_id.encode(), partition=partition)
    if wait <= 0:
        print(f"run {run_id}: cancel asked")
        return 0
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        topic = settings.topics.completions
        async for record, _ in records_between(settings, topic, asked_at - 60, 1e12):
            completion = _json(record.value)
            if completion and completion.get("run_id") == run_id:
                return _said_cancelled(completion)
        await asyncio.sleep(0.5)
    print(
        f"run {run_id}: cancel asked, but the run has not ended within {wait:g}s "
        "(is a control processor running?); it ends when one applies it",
        file=sys.stderr,
    )
    return 0


def _said_cancelled(completion: dict[str, Any]) -> int:
    run_id, status = completion["run_id"], completion.get("status")
    if status != "cancelled":
        print(f"run {run_id} {status} before the cancel reached it", file=sys.stderr)
        return 1
    tasks = completion.get("tasks") or {}
    stopped = [name for name, task in tasks.items() if task.get("status") == "cancelled"]
    print(f"run {run_id} cancelled; tasks not finished: {', '.join(stopped) or 'none'}")
    return 0


async def _in_table(settings: Settings, run_id: str) -> tuple[int, dict[str, Any]] | None:
    """The run table's latest record of ``run_id`` (a run, or a finished run's marker,
    as ``{"status": ...}``) and its partition."""
    key, found = run_id.encode(), None
    async for records in read_now(settings, settings.topics.runs):
        for record in records:
            if record.key == key:
                found = (record.partition, record.value)
    if found is None or found[1] is None:
        return None
    partition, value = found
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if isinstance(obj, list) and len(obj) >= 2:  # a finished run's marker
        return partition, {"status": obj[1]}
    return (partition, obj) if isinstance(obj, dict) else None


async def _find_run(settings: Settings, run_id: str) -> dict[str, Any] | None:
    completion = await _completion_of(settings, run_id)
    if completion is not None:
        return completion
    running = await _running(settings)
    return running.get(run_id)


async def _completion_of(settings: Settings, run_id: str) -> dict[str, Any] | None:
    """The run's completion, within the last 30 days of ``completions``."""
    since = time.time() - 30 * 86_400
    async for record, _ in records_between(settings, settings.topics.completions, since, 1e12):
        completion = _json(record.value)
        if completion and completion.get("run_id") == run_id:
            return completion
    return None


async def _running(settings: Settings) -> dict[str, dict[str, Any]]:
    """The runs the run table's changelog holds as running (latest record per run)."""
    latest: dict[bytes, bytes | None] = {}
    async for records in read_now(settings, settings.topics.runs):
        for record in records:
            if record.key is not None and b":" not in record.key[:10]:
                latest[record.key] = record.value
    out = {}
    for value in latest.values():
        run = _json(value)
        if run and run.get("status") == "running":
            out[run["run_id"]] = {
                "run_id": run["run_id"],
                "pipeline": run.get("pipeline"),
                "status": "running",
                "trigger": {k: (run.get("event") or {}).get(k) for k in ("id", "source", "type")},
                "started_at": _iso(run.get("created_at")),
                "tasks": {
                    name: {
                        "status": task.get("status"),
                        "attempts": task.get("attempt"),
                        "error": task.get("error"),
                        "ran_on": task.get("ran_on"),
                    }
                    for name, task in (run.get("tasks") or {}).items()
                },
            }
    return out


def _runs(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    since = args.since if args.since is not None else time.time() - 86_400
    rows = asyncio.run(_list_runs(settings, since, args.status))
    rows = [r for r in rows if args.pipeline in (None, r.get("pipeline"))]
    for row in rows:
        if args.json:
            print(orjson.dumps(row).decode())
        else:
            print(
                f"{row['run_id']}  {row.get('pipeline')}  {row['status']:<9}  "
                f"{row.get('started_at')}  {row.get('duration_ms') or ''}"
            )
    if not args.json:
        print(f"{len(rows)} run(s)")
    return 0


async def _list_runs(settings: Settings, since: float, status: str | None) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    if status in (None, "succeeded", "failed", "cancelled"):
        topic = settings.topics.completions
        async for record, _ in records_between(settings, topic, since, 1e12):
            completion = _json(record.value)
            if completion and status in (None, completion.get("status")):
                rows.append(completion)
    if status in (None, "running"):
        rows += list((await _running(settings)).values())
    return rows


def _dlq(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    since = args.since if args.since is not None else time.time() - 7 * 86_400
    entries = asyncio.run(_dead_letters(settings, since))
    if args.action == "show":
        if len(args.offset) != 1:
            print("headwater dlq show: give one record's offset (from dlq list)", file=sys.stderr)
            return 2
        for offset, entry in entries:
            if offset == args.offset[0]:
                print(orjson.dumps(entry, option=orjson.OPT_INDENT_2).decode())
                return 0
        print(f"no DLQ record at offset {args.offset[0]} since the span start", file=sys.stderr)
        return 1
    wanted = args.reason
    shown = [(o, e) for o, e in entries if wanted is None or wanted in str(e.get("reason"))]
    if args.offset:
        found = {o for o, _ in entries}
        missing = [o for o in args.offset if o not in found]
        if missing:
            said = ", ".join(str(o) for o in missing)
            print(f"no DLQ record at offset {said} since the span start", file=sys.stderr)
            return 1
        shown = [(o, e) for o, e in shown if o in set(args.offset)]
    if args.action == "redrive":
        return asyncio.run(redrive(settings, shown, args.dry_run, since))
    for offset, entry in shown:
        origin = entry.get("origin") or {}
        where = origin.get("source") or origin.get("topic") or origin.get("component") or "?"
        print(f"{offset}  {entry.get('at')}  {where}  {entry.get('reason')}")
    print(f"{len(shown)} record(s)")
    return 0


_Write = tuple[str, bytes, bytes | None, list[tuple[str, bytes]] | None]


async def redrive(
    settings: Settings, entries: list[tuple[int, dict[str, Any]]], dry_run: bool, since: float
) -> int:
    """Send each DLQ record's work again, keeping its identity: an event goes back to
    ``events`` (its id and source unchanged, so a run it already has is not started
    again), a source message is mapped again by its bridge, a failed run is requested
    again under the redrive identity of its trigger (``redrive:`` + source: a second
    redrive is refused by the run table) unless a run of its event has since succeeded."""
    producer = None if dry_run else kafka.producer(settings)
    if producer is not None:
        await producer.start()
    sent = skipped = 0
    succeeded: dict[str, set[tuple[str, str]]] = {}  # per pipeline: read once, not per record
    try:
        for offset, entry in entries:
            plan = entry.get("redrive")
            if not isinstance(plan, dict):
                print(f"{offset}: not re-drivable ({entry.get('reason')})")
                skipped += 1
                continue
            writes, said = await _redrive_writes(settings, entry, plan, since, succeeded)
            print(f"{offset}: {said}" + (" (dry run)" if dry_run and writes else ""))
            if not writes:
                skipped += 1
                continue
            sent += 1
            for topic, value, key, headers in writes:
                if producer is not None:
                    await producer.send_and_wait(topic, value, key=key, headers=headers)
    finally:
        if producer is not None:
            await producer.stop()
    verb = "would redrive" if dry_run else "redrove"
    print(f"{verb} {sent} record(s), skipped {skipped}")
    return 0


async def _redrive_writes(
    settings: Settings,
    entry: dict[str, Any],
    plan: dict[str, Any],
    since: float,
    succeeded: dict[str, set[tuple[str, str]]],
) -> tuple[list[_Write], str]:
    payload = _payload(entry)
    topics = settings.topics
    if plan.get("to") == "events":
        given = entry.get("headers") or {}
        headers = [(k, v.encode()) for k, v in given.items() if v is not None]
        return [(topics.events, payload, None, headers)], "event sent back to the events topic"
    if plan.get("to") == "bridge":
        try:
            events = _map_again(str(plan.get("kind")), str(plan.get("message_id")), payload)
        except Exception as exc:  # noqa: BLE001 - still not mappable: say why
            return [], f"still cannot be mapped: {exc}"
        writes: list[_Write] = []
        for event in events:
            headers, value = to_kafka(event)
            key = event.subject.encode() if event.subject else None
            writes.append((topics.events, value, key, list(headers)))
        return writes, f"source message mapped again into {len(writes)} event(s)"
    if plan.get("to") == "control":
        pipeline = str(plan.get("pipeline"))
        event = orjson.loads(payload)
        if pipeline not in succeeded:
            succeeded[pipeline] = await succeeded_events(settings, pipeline, since)
        if (str(event.get("source")), str(event.get("id"))) in succeeded[pipeline]:
            return [], f"a run of its event by {pipeline} has since succeeded: nothing to do"
        run_id = run_id_for(pipeline, str(event.get("id")), f"redrive:{event.get('source')}")
        value = encode_control(RunRequested(run_id, pipeline, event))
        said = f"run {run_id} of {pipeline} requested"
        return [(topics.control, value, run_id.encode(), None)], said
    return [], f"unknown redrive {plan!r}"


def _payload(entry: dict[str, Any]) -> bytes:
    if "payload_base64" in entry:
        return base64.b64decode(entry["payload_base64"])
    return str(entry.get("payload", "")).encode()


def _map_again(kind: str, message_id: str, body: bytes) -> list[Any]:
    """The events ``kind``'s bridge maps a source message into now."""
    importlib.import_module(registry.get(kind).source.partition(":")[0])  # its mapper
    return to_cloudevents(Delivery(kind=kind, message_id=message_id, body=body))


async def _dead_letters(settings: Settings, since: float) -> list[tuple[int, dict[str, Any]]]:
    out = []
    async for record, _ in records_between(settings, settings.topics.dlq, since, 1e12):
        entry = _json(record.value)
        if entry is not None:
            out.append((record.offset, entry))
    return out


def _json(value: bytes | None) -> dict[str, Any] | None:
    try:
        obj = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def _short(value: Any) -> str:
    text = orjson.dumps(value).decode()
    return text if len(text) <= OUTPUT_CHARS else text[: OUTPUT_CHARS - 3] + "..."


def _iso(at: Any) -> str | None:
    if not isinstance(at, int | float):
        return None
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
