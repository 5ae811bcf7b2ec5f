"""``headwater trace ID``: why an event did or did not start runs, from the log alone.

Nothing is recorded on the hot path: the trace is rebuilt on demand from what the log
holds — the event in ``events`` (by its id, or by ``hwmsgid``, the id of the source
message it was bridged from), every loaded pipeline's triggers evaluated against it now
with the first filter that fails and the value it saw (``model.matching.explain``, the
same tests the router runs), the run it started (its id derives from pipeline, event id
and source) with each task's attempts and outcome from ``completions``, and the DLQ
records about it. The verdicts are those of the pipeline files as loaded now; a file
edited since the event was routed may say otherwise than the router did then.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import orjson

from headwater.runner.envelope import CloudEvent, from_kafka
from headwater.runner.model.matching import explain
from headwater.runner.model.pipeline import Pipeline
from headwater.runner.replay import records_between
from headwater.runner.runs.machine import run_id_for

Say = Callable[[str], None]


async def trace(
    settings: Any, wanted: str, pipelines: Iterable[Pipeline], since: float, say: Say
) -> int:
    """Print the trace of every event ``wanted`` names; returns how many were found."""
    pipelines = list(pipelines)
    found: list[tuple[Any, CloudEvent]] = []
    async for record, _ in records_between(
        settings, settings.topics.events, since, time.time() + 60
    ):
        try:
            event = from_kafka(record.headers, record.value)
        except Exception:  # noqa: BLE001 - not a CloudEvent: the DLQ part says so
            continue
        if wanted in (event.id, event.extensions.get("hwmsgid")):
            found.append((record, event))
    runs = {run_id_for(p.name, e.id, e.source): p.name for _, e in found for p in pipelines}
    completions = await _completions(settings, set(runs), since)
    dead = await _dead_letters(settings, wanted, since)
    if not found:
        say(f"no event with id or source message id {wanted!r} in the log since the span start")
    for record, event in found:
        say(
            f"event {event.id} (type {event.type}, source {event.source}"
            + (f", subject {event.subject}" if event.subject else "")
            + f") at {record.topic}/{record.partition}/{record.offset}"
            + (
                f", bridged from message {event.extensions['hwmsgid']}"
                f" by {event.extensions.get('hwbridge', '?')}"
                if "hwmsgid" in event.extensions
                else ""
            )
        )
        for pipeline in pipelines:
            _verdict(pipeline, event, completions, say)
    for line in dead:
        say(line)
    return len(found)


def _verdict(pipeline: Pipeline, event: CloudEvent, completions: dict[str, Any], say: Say) -> None:
    if not pipeline.triggers:
        say(f"  {pipeline.name}: no triggers (schedule only)")
        return
    reasons = []
    for trigger in pipeline.triggers:
        why = explain(trigger, event)
        if why is not None:
            reasons.append(f"trigger {trigger.id}: {why}")
            continue
        if pipeline.joins(trigger.id):
            say(
                f"  {pipeline.name}: MATCHED trigger {trigger.id}, joined by {pipeline.join.key}"  # type: ignore[union-attr]
                " (the join's run, once complete, carries it in data.events)"
            )
            return
        if trigger.batch is not None:
            say(f"  {pipeline.name}: MATCHED trigger {trigger.id}, gathered into a batching window")
            return
        run_id = run_id_for(pipeline.name, event.id, event.source)
        say(f"  {pipeline.name}: MATCHED trigger {trigger.id} -> run {run_id}")
        completion = completions.get(run_id)
        if completion is None:
            say("    no completion yet (running, waiting, or not started)")
            return
        say(f"    {completion.get('status')} after {completion.get('duration_ms')} ms")
        for name, task in (completion.get("tasks") or {}).items():
            error = f": {task.get('error')}" if task.get("error") else ""
            ran = task.get("ran_on") or {}
            where = f" on {ran.get('route')}/{ran.get('instance')}" if ran else ""
            attempts = f"{task.get('attempts')} attempt(s)"
            say(f"    task {name}: {task.get('status')}, {attempts}{where}{error}")
        return
    say(f"  {pipeline.name}: no match — " + "; ".join(reasons))


def _read(settings: Any, topic: str, since: float) -> AsyncIterator[tuple[Any, int]]:
    """``topic``'s records logged from ``since`` on (up to now)."""
    return records_between(settings, topic, since, time.time() + 60)


async def _completions(settings: Any, run_ids: set[str], since: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if not run_ids:
        return out
    async for record, _ in records_between(
        settings, settings.topics.completions, since, time.time() + 60
    ):
        try:
            completion = orjson.loads(record.value)
        except orjson.JSONDecodeError:
            continue
        if isinstance(completion, dict) and completion.get("run_id") in run_ids:
            out[completion["run_id"]] = completion
    return out


async def _dead_letters(settings: Any, wanted: str, since: float) -> list[str]:
    out = []
    async for record, _ in _read(settings, settings.topics.dlq, since):
        try:
            entry = orjson.loads(record.value)
        except orjson.JSONDecodeError:
            continue
        origin = entry.get("origin") if isinstance(entry, dict) else None
        payload = entry.get("payload", "") if isinstance(entry, dict) else ""
        mentions = isinstance(origin, dict) and wanted in (
            origin.get("message_id"),
            origin.get("run_id"),
        )
        if mentions or (isinstance(payload, str) and f'"{wanted}"' in payload):
            out.append(f"DLQ at {record.offset}: {entry.get('reason')} (origin {origin})")
    return out
