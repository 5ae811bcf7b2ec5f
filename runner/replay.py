"""Replay and backfill: runs for a span of the past, requested straight into ``control``.

``replay`` re-reads ``events`` between two times (the records' log timestamps) and asks
for a run of the pipeline for each event one of its per-event triggers matches, as the
router would have. A replayed run has an identity of its own (its run id derives from the
event *and* the replay's id), so the run table does not refuse it as a duplicate of the
first run, and running the same replay again (same ``--id``) resumes it without doubling
anything. ``only_missing`` leaves out the events whose run already succeeded: those the
completions topic shows a succeeded run of this pipeline for (the first run's or an
earlier replay's; a replayed run's event keeps the event's id and source, plus the
``headwaterreplay`` extension).

``backfill`` asks for a run of each tick of the pipeline's schedule between two times.
A tick's run keeps the tick's identity (the scheduler's), so a tick that already ran is
refused by the run table: a backfill fills gaps and never runs a tick twice.

Both read what exists when they start, show progress on long spans, wait while the
runs in progress are over ``HEADWATER_MAX_PENDING_RUNS`` (a replay of a flood does not
become one), and with ``dry_run`` only say what would run and why. Every write is
awaited.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import TopicPartition

from headwater.runner.envelope import CloudEvent, epoch_iso, from_kafka
from headwater.runner.errors import HeadwaterError
from headwater.runner.flow.schedule import TICK_SOURCE_PREFIX, Fire, tick_event
from headwater.runner.log import kafka
from headwater.runner.log.lag import LagReader, runs_in
from headwater.runner.log.reader import FETCH_BYTES, topic_partitions
from headwater.runner.log.records import RunRequested, encode_control
from headwater.runner.model.matching import TriggerIndex
from headwater.runner.model.pipeline import Pipeline
from headwater.runner.runs.flow import control_key
from headwater.runner.runs.machine import run_id_for
from headwater.runner.settings import Settings

REPLAY_EXTENSION = "headwaterreplay"
#: Runs requested between two looks at the runs in progress.
WRITE_BATCH = 1_000
#: Seconds between progress lines.
PROGRESS_EVERY = 2.0
#: Ticks one backfill requests at most (a narrower span, or several, for more).
MAX_TICKS = 100_000
#: Seconds between looks at the runs in progress while over the bound.
WAIT_EVERY = 1.0

Say = Callable[[str], None]


class ReplayError(HeadwaterError):
    """A replay or backfill that cannot run as asked (no schedule, an empty span...)."""


@dataclass
class Tally:
    """What a replay or backfill did (or, dry, would do)."""

    read: int = 0
    matched: int = 0
    requested: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, why: str) -> None:
        self.skipped[why] = self.skipped.get(why, 0) + 1

    def summary(self, dry_run: bool) -> str:
        verb = "would request" if dry_run else "requested"
        parts = [f"{verb} {self.requested} run(s)"]
        parts += [f"skipped {n} ({why})" for why, n in sorted(self.skipped.items())]
        return "; ".join(parts)


def replay_id() -> str:
    return "r-" + uuid.uuid4().hex[:10]


async def replay(
    settings: Settings,
    pipeline: Pipeline,
    start: float,
    end: float,
    *,
    only_missing: bool,
    dry_run: bool,
    replay: str,
    say: Say,
) -> Tally:
    if end <= start:
        raise ReplayError(f"--to ({epoch_iso(end)}) must be after --from ({epoch_iso(start)})")
    await _topics(settings, pipeline)
    index = TriggerIndex([pipeline])
    succeeded = await succeeded_events(settings, pipeline.name, start) if only_missing else set()
    tally = Tally()
    progress = _Progress(say, "replay " + replay)
    async with _Requests(settings, dry_run) as requests:
        async for record, total in records_between(settings, settings.topics.events, start, end):
            tally.read += 1
            progress.show(tally, total)
            try:
                event = from_kafka(record.headers, record.value)
            except Exception:  # noqa: BLE001 - the router sent it to the DLQ, as it would now
                tally.skip("not a CloudEvent")
                continue
            matches = index.matches(event)
            if not matches:
                continue
            tally.matched += 1
            trigger = matches[0].trigger
            if pipeline.joins(trigger.id) or trigger.batch is not None:
                tally.skip("its trigger batches or joins: not replayed")
                continue
            if (event.source, event.id) in succeeded:
                tally.skip("already succeeded")
                if dry_run:
                    say(f"skip {_describe(event)}: a run of it already succeeded")
                continue
            data = event.to_dict()
            data[REPLAY_EXTENSION] = replay
            run_id = run_id_for(pipeline.name, event.id, f"replay:{replay}:{event.source}")
            if dry_run:
                say(f"run  {_describe(event)}: matches trigger {trigger.id} (run {run_id})")
            await requests.add(RunRequested(run_id, pipeline.name, data), pipeline)
            tally.requested += 1
    progress.done(tally)
    return tally


async def backfill(
    settings: Settings,
    pipeline: Pipeline,
    start: float,
    end: float,
    *,
    dry_run: bool,
    say: Say,
) -> Tally:
    spec = pipeline.schedule
    if spec is None:
        raise ReplayError(f"pipeline {pipeline.name!r} has no schedule to backfill")
    if end <= start:
        raise ReplayError(f"--to ({epoch_iso(end)}) must be after --from ({epoch_iso(start)})")
    count = sum(1 for _ in itertools.islice(_ticks(spec.ticks(start - 1e-6), end), MAX_TICKS + 1))
    if count > MAX_TICKS:
        raise ReplayError(
            f"the span holds more than {MAX_TICKS:,} ticks of {pipeline.name!r}: backfill "
            "a narrower span at a time"
        )
    await _topics(settings, pipeline)
    ran = await succeeded_events(settings, pipeline.name, start, failed_too=True)
    tally = Tally()
    progress = _Progress(say, "backfill " + pipeline.name)
    now = time.time()
    async with _Requests(settings, dry_run) as requests:
        for tick in _ticks(spec.ticks(start - 1e-6), end):
            tally.read += 1
            progress.show(tally, None)
            event = tick_event(spec, pipeline.name, Fire(tick, late=True), now)
            event["data"]["backfill"] = True
            run_id = run_id_for(pipeline.name, event["id"], event["source"])
            if (TICK_SOURCE_PREFIX + pipeline.name, event["id"]) in ran:
                tally.skip("the tick already ran")
                if dry_run:
                    say(f"skip tick {event['id']}: it already ran")
                continue
            if dry_run:
                say(f"run  tick {event['id']}: no run of it is known (run {run_id})")
            await requests.add(RunRequested(run_id, pipeline.name, event), pipeline)
            tally.requested += 1
    progress.done(tally)
    return tally


async def _topics(settings: Settings, pipeline: Pipeline) -> None:
    """The log's topics, as a runner creates them (never auto-created with other sizes)."""
    await kafka.ensure_topics(settings, {task.route for task in pipeline.tasks} | {"default"})


def _ticks(ticks: Iterator[float], end: float) -> Iterator[float]:
    for tick in ticks:
        if tick > end:
            return
        yield tick


def _describe(event: CloudEvent) -> str:
    when = f", time {event.time}" if event.time else ""
    return f"event {event.id} (source {event.source}, type {event.type}{when})"


class _Progress:
    def __init__(self, say: Say, what: str) -> None:
        self._say, self._what = say, what
        self._last = time.monotonic()

    def show(self, tally: Tally, total: int | None) -> None:
        if time.monotonic() - self._last < PROGRESS_EVERY:
            return
        self._last = time.monotonic()
        of = f" of about {total:,}" if total else ""
        share = f" ({100 * tally.read / total:.0f}%)" if total else ""
        self._say(f"{self._what}: read {tally.read:,}{of}{share}, requested {tally.requested:,}")

    def done(self, tally: Tally) -> None:
        self._say(f"{self._what}: read {tally.read:,}, done")


async def records_between(
    settings: Settings, topic: str, start: float, end: float
) -> AsyncIterator[tuple[Any, int]]:
    """The records of ``topic`` whose log timestamp is in [start, end), partition by
    partition, with how many the span holds at most (for progress)."""
    partitions = await topic_partitions(settings, topic)
    if not partitions:
        return
    reader = kafka.consumer(settings, group=None, **FETCH_BYTES)
    await reader.start()
    try:
        tps = [TopicPartition(topic, p) for p in partitions]
        reader.assign(tps)
        firsts = await reader.offsets_for_times({tp: int(start * 1000) for tp in tps})
        lasts = await reader.offsets_for_times({tp: int(end * 1000) for tp in tps})
        ends = await reader.end_offsets(tps)
        spans: dict[TopicPartition, tuple[int, int]] = {}
        for tp in tps:
            first = firsts.get(tp)
            if first is None:
                continue  # nothing at or after ``start``
            last = lasts.get(tp)
            spans[tp] = (first.offset, last.offset if last is not None else ends[tp])
        total = sum(stop - begin for begin, stop in spans.values())
        for tp, (begin, stop) in spans.items():
            if begin >= stop:
                continue
            reader.seek(tp, begin)
            while (position := await reader.position(tp)) < stop:
                batch = await reader.getmany(tp, timeout_ms=500, max_records=5000)
                for record in batch.get(tp, ()):
                    if record.offset >= stop:
                        break
                    if start * 1000 <= record.timestamp < end * 1000:
                        yield record, total
                if not batch and position >= ends[tp]:
                    break
    finally:
        await reader.stop()


async def succeeded_events(
    settings: Settings, pipeline: str, since: float, *, failed_too: bool = False
) -> set[tuple[str, str]]:
    """(source, id) of the events the completions topic shows a succeeded run of
    ``pipeline`` for, completed from ``since`` on (its runs cannot end before it)."""
    out: set[tuple[str, str]] = set()
    statuses = {"succeeded", "failed"} if failed_too else {"succeeded"}
    async for record, _ in records_between(settings, settings.topics.completions, since, 1e12):
        try:
            completion = orjson.loads(record.value)
            if completion.get("pipeline") == pipeline and completion.get("status") in statuses:
                trigger = completion.get("trigger") or {}
                out.add((str(trigger.get("source")), str(trigger.get("id"))))
        except (orjson.JSONDecodeError, AttributeError, TypeError):
            continue  # not a completion headwater wrote: nothing to learn from it
    return out


class _Requests:
    """Run requests written to ``control`` in batches, each batch acknowledged; before a
    batch, waits while the runs in progress are over the bound."""

    def __init__(self, settings: Settings, dry_run: bool) -> None:
        self._settings = settings
        self._dry_run = dry_run
        self._producer: Any = None
        self._pending: list[Any] = []

    async def __aenter__(self) -> _Requests:
        if not self._dry_run:
            self._producer = kafka.producer(self._settings)
            await self._producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            if exc[0] is None:
                await self._flush()
        finally:
            if self._producer is not None:
                await self._producer.stop()

    async def add(self, request: RunRequested, pipeline: Pipeline) -> None:
        if self._dry_run:
            return
        if not self._pending:
            await self._room()
        key = control_key(pipeline, request.event, request.run_id)
        value = encode_control(request)
        topic = self._settings.topics.control
        self._pending.append(await self._producer.send(topic, value, key=key))
        if len(self._pending) >= WRITE_BATCH:
            await self._flush()

    async def _flush(self) -> None:
        pending, self._pending = self._pending, []
        await kafka.all_acknowledged(pending, self._settings.kafka.write_timeout)

    async def _room(self) -> None:
        bound = self._settings.bounds.pending_runs
        if not bound:
            return
        topics = self._settings.topics
        wanted = (topics.group("control"), topics.control)
        async with LagReader(self._settings) as reader:
            while True:
                partitions = (await reader.read([wanted]))[wanted]
                pending = sum(p.lag + runs_in(p.metadata) for p in partitions.values())
                if pending < bound:
                    return
                await asyncio.sleep(WAIT_EVERY)
