"""The run table's changelog: one compacted record per run or open window, per partition.

The ``runs`` topic has as many partitions as ``control``, and a run's (or window's)
record is written to the partition of the control partition that owns it, so restoring
one control partition reads one changelog partition. Keys are the run id, or ``window:`` +
the window key, or ``closed:`` + the run id of a closed window (its event ids, for the dedup
retention), or ``schedule:`` + [pipeline, schedule id] (the ticks it considered;
``flow.schedule``), or ``join:`` + the join key (an open join); run ids are UUIDs, so they
never clash. A ``None`` value is a tombstone (a closed window, an expired marker, expired
ids). What must hold: folding the records in order gives back the table the last committed
transaction left.

The fold lives in the partition's local store (``store.Batch.fold``); a restore reads
only the changelog after the offset the store checkpointed, or all of it when the store
could not be trusted (logging its progress: a large partition takes a while).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson

from headwater.runner.errors import BadMessage
from headwater.runner.flow.schedule import ScheduleState
from headwater.runner.log.reader import offsets, read_partition
from headwater.runner.runs.joins import Join
from headwater.runner.runs.machine import Run
from headwater.runner.runs.store import (
    CLOSED_PREFIX,
    JOIN_PREFIX,
    SCHEDULE_PREFIX,
    WINDOW_PREFIX,
    Store,
)
from headwater.runner.runs.windows import Closed, Window
from headwater.runner.settings import Settings

log = logging.getLogger(__name__)

PROGRESS_EVERY = 5.0  # seconds between progress lines of a long restore


def run_record(run: Run) -> tuple[bytes, bytes]:
    return run.run_id.encode(), orjson.dumps(run.to_json())


def window_record(key: str, window: Window | None) -> tuple[bytes, bytes | None]:
    value = None if window is None else orjson.dumps(window.to_json())
    return (WINDOW_PREFIX + key).encode(), value


def join_record(key: str, join: Join | None) -> tuple[bytes, bytes | None]:
    value = None if join is None else orjson.dumps(join.to_json())
    return (JOIN_PREFIX + key).encode(), value


def schedule_record(
    pipeline: str, schedule: str, state: ScheduleState
) -> tuple[bytes, bytes | None]:
    key = SCHEDULE_PREFIX + orjson.dumps([pipeline, schedule]).decode()
    return key.encode(), orjson.dumps(state.to_json())


def closed_record(closed: Closed | None, run_id: str) -> tuple[bytes, bytes | None]:
    value = None if closed is None else orjson.dumps(closed.to_json())
    return (CLOSED_PREFIX + run_id).encode(), value


Unreadable = tuple[Any, str]  # a changelog record and why it cannot be read


async def restore(settings: Settings, partition: int, store: Store) -> list[Unreadable]:
    """Bring ``store`` up to the changelog partition's end: from its checkpoint when it has
    one the changelog still holds, else from the beginning (the store is emptied first).
    Returns the records that could not be read (for the DLQ: a restore never stops at
    one)."""
    topic = settings.topics.runs
    beginning, end = await offsets(settings, topic, partition)
    start = store.checkpoint
    if start is not None and not beginning <= start <= end:
        log.warning(
            "partition %d: local state is at changelog offset %d, outside the changelog's "
            "%d..%d (topic recreated or truncated): rebuilding it",
            partition,
            start,
            beginning,
            end,
        )
        store.clear()
        start = None
    rebuilding = start is None
    if rebuilding:
        log.info(
            "partition %d: rebuilding the run table from the changelog (%d records)",
            partition,
            end - beginning,
        )
    unreadable: list[Unreadable] = []
    started = last_said = time.monotonic()
    count = 0
    async for records in read_partition(settings, topic, partition, start=start or 0):
        batch = store.batch()
        for record in records:
            try:
                batch.fold(record.key, record.value)
            except BadMessage as exc:
                unreadable.append((record, str(exc)))
        batch.commit(records[-1].offset + 1)
        count += len(records)
        now = time.monotonic()
        if rebuilding and now - last_said >= PROGRESS_EVERY:
            last_said = now
            done = records[-1].offset + 1 - beginning
            log.info(
                "partition %d: rebuilding: %d of %d changelog records (%.0f/s)",
                partition,
                done,
                end - beginning,
                count / (now - started),
            )
    if store.checkpoint is None or store.checkpoint < end:
        store.batch().commit(end)  # nothing (more) to read: the store is up to date at end
    elapsed = time.monotonic() - started
    log.info(
        "partition %d: run table %s: %d changelog record(s) in %.1f s",
        partition,
        "rebuilt from the changelog" if rebuilding else "restored from local state",
        count,
        elapsed,
    )
    return unreadable
