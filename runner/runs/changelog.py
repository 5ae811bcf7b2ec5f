"""The run table's changelog: one compacted record per run or open window, per partition.

The ``runs`` topic has as many partitions as ``control``, and a run's (or window's)
record is written to the partition of the control partition that owns it, so restoring
one control partition reads one changelog partition. Keys are the run id, or
``window:`` + the window key, or ``closed:`` + the run id of a closed window (its event
ids, for the dedup retention); run ids are UUIDs, so they never clash. A ``None`` value is
a tombstone (a closed window, an expired marker, expired ids). What must hold: folding
the records in order gives back the table the last committed transaction left.
"""

from __future__ import annotations

from typing import Any

import orjson

from headwater.runner.errors import BadMessage
from headwater.runner.log.reader import read_partition
from headwater.runner.runs.machine import Run
from headwater.runner.runs.table import Partition, marker
from headwater.runner.runs.windows import Closed, Window
from headwater.runner.settings import Settings

WINDOW_PREFIX = "window:"
CLOSED_PREFIX = "closed:"


def run_record(run: Run) -> tuple[bytes, bytes]:
    return run.run_id.encode(), orjson.dumps(run.to_json())


def window_record(key: str, window: Window | None) -> tuple[bytes, bytes | None]:
    value = None if window is None else orjson.dumps(window.to_json())
    return (WINDOW_PREFIX + key).encode(), value


def closed_record(closed: Closed | None, run_id: str) -> tuple[bytes, bytes | None]:
    value = None if closed is None else orjson.dumps(closed.to_json())
    return (CLOSED_PREFIX + run_id).encode(), value


def fold(table: Partition, key: bytes | None, value: bytes | None) -> None:
    """Apply one changelog record to ``table`` (finished runs are kept as markers);
    ``BadMessage`` (``table`` unchanged) for a record that is not one headwater wrote."""
    try:
        _fold(table, key, value)
    except Exception as exc:  # noqa: BLE001 - any shape of garbage: say what it was
        raise BadMessage(f"changelog record is unreadable ({type(exc).__name__}: {exc})") from None


def _fold(table: Partition, key: bytes | None, value: bytes | None) -> None:
    if key is None:
        raise ValueError("it has no key")
    name = key.decode()
    if name.startswith(WINDOW_PREFIX):
        name = name[len(WINDOW_PREFIX) :]
        if value is None:
            table.windows.pop(name, None)
        else:
            table.windows[name] = Window.from_json(orjson.loads(value))
    elif name.startswith(CLOSED_PREFIX):
        if value is None:
            table.drop_closed(name[len(CLOSED_PREFIX) :])
        else:
            table.keep_closed(Closed.from_json(orjson.loads(value)))
    elif value is None:
        table.runs.pop(name, None)
    else:
        run = Run.from_json(orjson.loads(value))
        table.runs[run.run_id] = marker(run) if run.status != "running" else run


async def restore(settings: Settings, partition: int) -> tuple[Partition, list[Unreadable]]:
    """A partition's table from its changelog (expired markers too: the first sweep after
    the restore deletes them), and the records that could not be read (for the DLQ: a
    restore never stops at one)."""
    table, unreadable = Partition(), []
    async for records in read_partition(settings, settings.topics.runs, partition):
        for record in records:
            try:
                fold(table, record.key, record.value)
            except BadMessage as exc:
                unreadable.append((record, str(exc)))
    return table, unreadable


Unreadable = tuple[Any, str]  # a changelog record and why it cannot be read
