"""A control partition's run table on local disk: the fold of its changelog partition,
kept in an embedded RocksDB (``rocksdict``) under the state dir, with the changelog offset
it has applied.

Memory holds only what is live (running runs, open windows); a finished run's marker and a
closed window's event ids, which are kept for the dedup retention and so grow with runs x
retention, live only here. What must hold:

- the store is the fold of the changelog up to its checkpoint: every write is one atomic
  batch of the changelog records a committed transaction wrote, with the offset to read
  from next, so a crash at any point leaves a store that a read of the changelog tail
  after its checkpoint brings up to date (folding a record twice changes nothing);
- a store is never trusted when it may be wrong: it cannot be opened or read (corrupt,
  truncated files), it was written for another topic or partition, its checkpoint is past
  the changelog's end (the topic was recreated), or it was last brought up to date longer
  ago than the changelog keeps tombstones (``TRUSTED_FOR``): then it is wiped and rebuilt
  from the changelog;
- expiry is work proportional to what expires: markers and closed windows are indexed by
  the time they expire from (``x`` keys, ordered by time), and ``due`` reads that index
  from its oldest end only as far as the cutoff.

Keys (one byte of kind, then):

- ``o``: the checkpoint (JSON: format, topic, partition, offset, at);
- ``r<run id>``: a running run, ``w<window>``: an open window (changelog JSON, loaded
  into memory by a restore);
- ``m<run id>``: a finished run's marker (JSON ``[pipeline, status, created, finished]``);
- ``k<run id>``: a closed window (its ``Closed`` JSON), ``b<JSON [window, source, id]>``:
  the run id of the closed window that holds that event;
- ``f<JSON [pipeline, key]>``: a throttle key's recent start times (``runs.flow``);
- ``x<ms since epoch, 8 bytes big-endian><m|k><run id>``: the expiry index.
"""

from __future__ import annotations

import logging
import shutil
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import orjson

from headwater.runner.errors import BadMessage, HeadwaterError
from headwater.runner.flow.schedule import ScheduleState
from headwater.runner.runs.joins import Join
from headwater.runner.runs.machine import Run
from headwater.runner.runs.windows import Closed, Window

log = logging.getLogger(__name__)

FORMAT = 1
#: How long after it was last brought up to date a store is trusted: under the changelog's
#: ``delete.retention.ms`` (Kafka's default, 24 h, which ``ensure_topics`` sets), the time
#: a tombstone is kept after compaction reached it. A store older than that may miss a
#: tombstone that compaction has since removed, so it is rebuilt.
TRUSTED_FOR = 20 * 3600.0
#: The memory of every store of a process together: one block cache, which also counts
#: the memtables (at most ``MEMTABLE_BYTES`` of it); what else grows with the keys is the
#: table files' bloom filters and indexes (about 3 bytes a marker).
CACHE_BYTES = 48 * 1024 * 1024
MEMTABLE_BYTES = 24 * 1024 * 1024
WINDOW_PREFIX = "window:"
CLOSED_PREFIX = "closed:"
FLOW_PREFIX = "flow:"  # + JSON [pipeline, key]: a throttle key's recent starts
SCHEDULE_PREFIX = "schedule:"  # + JSON [pipeline, schedule id]: a schedule's state
JOIN_PREFIX = "join:"  # + the join key: an open join
_MS = struct.Struct(">Q")


class StoreUnusable(HeadwaterError):
    """The local store cannot be opened or read: it is wiped and rebuilt from the changelog."""


class StoreLocked(HeadwaterError):
    """Another process (or an earlier store of this one) has the store open."""


class KV(Protocol):
    def get(self, key: bytes) -> bytes | None: ...
    def write(self, changes: dict[bytes, bytes | None]) -> None: ...
    def scan(self, start: bytes, end: bytes) -> Iterator[tuple[bytes, bytes]]: ...
    def close(self) -> None: ...
    def emptied(self) -> KV: ...


class RocksKV:
    """``KV`` on a RocksDB database (``rocksdict`` in raw mode). Its memory is bounded
    whatever it holds (``CACHE_BYTES``, measured by ``make bench``'s markers row)."""

    _cache: Any = None
    _buffers: Any = None

    def __init__(self, path: Path) -> None:
        from rocksdict import (
            BlockBasedIndexType,
            BlockBasedOptions,
            Cache,
            Options,
            Rdict,
            WriteBufferManager,
        )

        if RocksKV._cache is None:  # one budget for every store of the process
            RocksKV._cache = Cache(CACHE_BYTES)
            RocksKV._buffers = WriteBufferManager.new_write_buffer_manager_with_cache(
                MEMTABLE_BYTES, False, RocksKV._cache
            )
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        table = BlockBasedOptions()
        table.set_block_cache(RocksKV._cache)
        table.set_bloom_filter(10, False)
        # Filters and indexes in the block cache too, partitioned, only their top level
        # pinned: memory stays within the cache whatever the store holds.
        table.set_index_type(BlockBasedIndexType.two_level_index_search())
        table.set_partition_filters(True)
        table.set_cache_index_and_filter_blocks(True)
        table.set_pin_top_level_index_and_filter(True)
        options.set_block_based_table_factory(table)
        options.set_write_buffer_manager(RocksKV._buffers)
        options.set_write_buffer_size(8 * 1024 * 1024)
        options.set_max_write_buffer_number(2)
        options.set_max_open_files(256)
        options.set_max_background_jobs(2)
        self._path = path
        try:
            self._db = Rdict(str(path), options=options)
        except Exception as exc:  # noqa: BLE001 - rocksdict raises plain Exceptions
            # Never wiped: another process may be using it. (RocksDB says "While lock file:
            # .../LOCK"; a "block checksum mismatch" is corruption, not a lock.)
            if "lock file" in str(exc).lower() or "/LOCK" in str(exc):
                raise StoreLocked(
                    f"{path} is in use by another process (two processes with one "
                    f"HEADWATER_INSTANCE and HEADWATER_STATE_DIR?): {exc}"
                ) from None
            raise StoreUnusable(f"cannot open {path}: {exc}") from None

    def _unusable(self, doing: str, exc: Exception) -> StoreUnusable:
        """Flag the store so that no later open trusts it (see ``open_store``)."""
        untrusted(self._path).touch()
        return StoreUnusable(f"cannot {doing} {self._path}: {exc}")

    def get(self, key: bytes) -> bytes | None:
        try:
            value: bytes | None = self._db.get(key)
        except Exception as exc:  # noqa: BLE001
            raise self._unusable("read", exc) from None
        return value

    def write(self, changes: dict[bytes, bytes | None]) -> None:
        from rocksdict import WriteBatch

        batch = WriteBatch(raw_mode=True)
        for key, value in changes.items():
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        try:
            self._db.write(batch)
        except Exception as exc:  # noqa: BLE001
            raise self._unusable("write", exc) from None

    def scan(self, start: bytes, end: bytes) -> Iterator[tuple[bytes, bytes]]:
        try:
            for key, value in self._db.items(from_key=start):
                assert isinstance(key, bytes)  # raw mode
                if key >= end:
                    return
                yield key, value
        except Exception as exc:  # noqa: BLE001
            raise self._unusable("read", exc) from None

    def close(self) -> None:
        self._db.close()

    def emptied(self) -> RocksKV:
        self._db.close()
        shutil.rmtree(self._path, ignore_errors=True)
        return RocksKV(self._path)


class MemoryKV:
    """``KV`` in a dict, for the run table's pure unit tests."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    def write(self, changes: dict[bytes, bytes | None]) -> None:
        for key, value in changes.items():
            if value is None:
                self.data.pop(key, None)
            else:
                self.data[key] = value

    def scan(self, start: bytes, end: bytes) -> Iterator[tuple[bytes, bytes]]:
        for key in sorted(k for k in self.data if start <= k < end):
            yield key, self.data[key]

    def close(self) -> None:
        pass

    def emptied(self) -> MemoryKV:
        return MemoryKV()


class Store:
    """One control partition's state (see the module's docstring)."""

    def __init__(self, kv: KV, topic: str, partition: int) -> None:
        self._kv = kv
        self.topic, self.partition = topic, partition
        self.checkpoint: int | None = None  # the changelog offset to read from; None: rebuild
        meta = self._meta()
        if meta is not None:
            self.checkpoint = int(meta["offset"])

    def _meta(self) -> dict[str, Any] | None:
        raw = self._kv.get(b"o")
        if raw is None:
            return None
        try:
            meta = orjson.loads(raw)
            if (meta["format"], meta["topic"], meta["partition"]) != (
                FORMAT,
                self.topic,
                self.partition,
            ):
                return None
            if not isinstance(meta["offset"], int) or meta["offset"] < 0:
                return None
            if time.time() - float(meta["at"]) > TRUSTED_FOR:
                return None
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None
        return dict(meta)

    def batch(self) -> Batch:
        return Batch(self)

    def clear(self) -> None:
        """Forget everything: the store is rebuilt from the changelog's beginning."""
        self._kv = self._kv.emptied()
        self.checkpoint = None

    def stamp(self) -> None:
        """Say the store is up to date now (its owner's, or a standby's, while it follows):
        an idle partition's store stays trusted."""
        if self.checkpoint is not None:
            self._kv.write({b"o": self._checkpoint_value(self.checkpoint)})

    def _checkpoint_value(self, offset: int) -> bytes:
        meta = {
            "format": FORMAT,
            "topic": self.topic,
            "partition": self.partition,
            "offset": offset,
            "at": time.time(),
        }
        return orjson.dumps(meta)

    # --- reads ---------------------------------------------------------------------------

    def marker(self, run_id: str) -> Run | None:
        raw = self._kv.get(b"m" + run_id.encode())
        if raw is None:
            return None
        return _marker_run(run_id, raw)

    def closed_run(self, window: str, source: str, event_id: str) -> str | None:
        """The run id of the closed window that holds this event, if it is still kept."""
        raw = self._kv.get(b"b" + orjson.dumps([window, source, event_id]))
        return None if raw is None else raw.decode()

    def running(self) -> Iterator[Run]:
        for _, value in self._kv.scan(b"r", b"s"):
            yield Run.from_json(orjson.loads(value))

    def starts(self) -> Iterator[tuple[tuple[str, str | None], list[float]]]:
        """Each throttle key's recent start times."""
        for key, value in self._kv.scan(b"f", b"g"):
            yield _read_starts(key[1:], value)

    def schedules(self) -> Iterator[tuple[tuple[str, str], ScheduleState]]:
        """Each schedule's state, by (pipeline, schedule id)."""
        for key, value in self._kv.scan(b"c", b"d"):
            yield _read_schedule(key[1:], value)

    def joins(self) -> Iterator[tuple[str, Join]]:
        for key, value in self._kv.scan(b"j", b"k"):
            yield key[1:].decode(), Join.from_json(orjson.loads(value))

    def windows(self) -> Iterator[tuple[str, Window]]:
        for key, value in self._kv.scan(b"w", b"x"):
            yield key[1:].decode(), Window.from_json(orjson.loads(value))

    def due(self, before: float, limit: int) -> tuple[list[str], list[str]]:
        """The run ids of markers and of closed windows that expire from before ``before``
        (at most ``limit`` in all), oldest first; index entries left by a record that
        changed since are removed on the way."""
        end = b"x" + _MS.pack(max(0, int(before * 1000)))
        markers: list[str] = []
        closed: list[str] = []
        stale: dict[bytes, bytes | None] = {}
        for key, _ in self._kv.scan(b"x", end):
            if len(markers) + len(closed) >= limit:
                break
            kind, run_id = key[9:10], key[10:]
            target = self._kv.get(kind + run_id)
            if target is None or _index_key(kind, run_id, _indexed_at(kind, target)) != key:
                stale[key] = None
            elif kind == b"m":
                markers.append(run_id.decode())
            else:
                closed.append(run_id.decode())
        if stale:
            self._kv.write(stale)
        return markers, closed

    def close(self) -> None:
        self._kv.close()


class Batch:
    """Changelog records folded into a store, written in one atomic write with the
    offset to read from next. Reads of a batch see its own earlier records."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._kv = store._kv
        self._changes: dict[bytes, bytes | None] = {}

    def _get(self, key: bytes) -> bytes | None:
        if key in self._changes:
            return self._changes[key]
        return self._kv.get(key)

    def fold(
        self,
        key: bytes | None,
        value: bytes | None,
        decoded: Run | Window | Closed | Join | None = None,
    ) -> None:
        """Apply one changelog record (``decoded``: what its value encodes, when the caller
        has it, so it is not read back); ``BadMessage`` (nothing applied) for a record
        that is not one headwater wrote."""
        try:
            changes = self._changes_of(key, value, decoded)
        except Exception as exc:  # noqa: BLE001 - any shape of garbage: say what it was
            reason = f"changelog record is unreadable ({type(exc).__name__}: {exc})"
            raise BadMessage(reason) from None
        self._changes.update(changes)

    def _changes_of(
        self, key: bytes | None, value: bytes | None, decoded: Run | Window | Closed | Join | None
    ) -> dict[bytes, bytes | None]:
        if key is None:
            raise ValueError("it has no key")
        name = key.decode()
        out: dict[bytes, bytes | None] = {}
        if name.startswith(WINDOW_PREFIX):
            window_key = b"w" + name[len(WINDOW_PREFIX) :].encode()
            if value is not None and decoded is None:
                Window.from_json(orjson.loads(value))  # it must read back
            out[window_key] = value
            return out
        if name.startswith(FLOW_PREFIX):
            group = name[len(FLOW_PREFIX) :].encode()
            if value is not None:
                _read_starts(group, value)  # it must read back
            out[b"f" + group] = value
            return out
        if name.startswith(JOIN_PREFIX):
            joined = b"j" + name[len(JOIN_PREFIX) :].encode()
            if value is not None and decoded is None:
                Join.from_json(orjson.loads(value))  # it must read back
            out[joined] = value
            return out
        if name.startswith(SCHEDULE_PREFIX):
            schedule = name[len(SCHEDULE_PREFIX) :].encode()
            if value is not None:
                _read_schedule(schedule, value)  # it must read back
            out[b"c" + schedule] = value
            return out
        if name.startswith(CLOSED_PREFIX):
            run_id = name[len(CLOSED_PREFIX) :].encode()
            if value is None:  # (a closed window's record is never rewritten otherwise)
                old = self._get(b"k" + run_id)
                if old is not None:
                    self._drop_closed(run_id, old, out)
            else:
                closed = decoded if isinstance(decoded, Closed) else None
                closed = closed or Closed.from_json(orjson.loads(value))
                out[b"k" + run_id] = value
                out[_index_key(b"k", run_id, closed.closed_at)] = b""
                for source, event_id in closed.ids:
                    out[b"b" + orjson.dumps([closed.window, source, event_id])] = run_id
            return out
        run_id = name.encode()
        out[b"r" + run_id] = None
        if value is None:  # an expired marker (a finished run is never rewritten otherwise)
            old_marker = self._get(b"m" + run_id)
            if old_marker is not None:
                out[_index_key(b"m", run_id, _indexed_at(b"m", old_marker))] = None
                out[b"m" + run_id] = None
            return out
        if isinstance(decoded, Run):
            fields = (decoded.run_id, decoded.pipeline, decoded.status)
            created_at, finished_at = decoded.created_at, decoded.finished_at
        else:  # a finished run is read only as far as its marker needs (a rebuild's speed)
            obj = orjson.loads(value)
            fields = (obj["run_id"], obj["pipeline"], obj["status"])
            created_at, finished_at = obj["created_at"], obj["finished_at"]
            if fields[2] == "running":
                Run.from_json(obj)  # it must read back whole: memory gets it on a restore
            if fields[0] != name:
                raise ValueError(f"its key is {name!r} but it holds run {fields[0]!r}")
            _check_marker(*fields[1:], created_at, finished_at)
        if fields[2] == "running":
            out[b"r" + run_id] = value
        else:
            out[b"m" + run_id] = orjson.dumps([fields[1], fields[2], created_at, finished_at])
            out[_index_key(b"m", run_id, finished_at)] = b""
        return out

    def _drop_closed(self, run_id: bytes, raw: bytes, out: dict[bytes, bytes | None]) -> None:
        closed = Closed.from_json(orjson.loads(raw))
        for source, event_id in closed.ids:
            ref = b"b" + orjson.dumps([closed.window, source, event_id])
            if self._get(ref) == run_id:
                out[ref] = None
        out[_index_key(b"k", run_id, closed.closed_at)] = None
        out[b"k" + run_id] = None

    def commit(self, offset: int | None) -> None:
        """Write the batch; ``offset``: the changelog offset to read from next (``None``:
        the checkpoint stays)."""
        if offset is not None:
            self._changes[b"o"] = self._store._checkpoint_value(offset)
        if self._changes:
            self._kv.write(self._changes)
        if offset is not None:
            self._store.checkpoint = offset
        self._changes = {}


def _read_starts(group: bytes, value: bytes) -> tuple[tuple[str, str | None], list[float]]:
    pipeline, key = orjson.loads(group)
    starts = orjson.loads(value)["starts"]
    if not isinstance(pipeline, str) or not (key is None or isinstance(key, str)):
        raise ValueError("its key is not [pipeline, key]")
    if not isinstance(starts, list) or not all(isinstance(t, int | float) for t in starts):
        raise ValueError("its starts are not a list of times")
    return (pipeline, key), [float(t) for t in starts]


def _read_schedule(key: bytes, value: bytes) -> tuple[tuple[str, str], ScheduleState]:
    pipeline, schedule = orjson.loads(key)
    if not isinstance(pipeline, str) or not isinstance(schedule, str):
        raise ValueError("its key is not [pipeline, schedule id]")
    obj = orjson.loads(value)
    if not isinstance(obj, dict):
        raise ValueError("its value is not an object")
    return (pipeline, schedule), ScheduleState.from_json(obj)


def _check_marker(pipeline: Any, status: Any, created_at: Any, finished_at: Any) -> None:
    """Raise unless these are the fields of a run (as ``Run`` has them)."""
    if not isinstance(pipeline, str):
        raise TypeError(f"pipeline is {type(pipeline).__name__}, not a string")
    if status not in ("running", "succeeded", "failed", "cancelled"):
        raise ValueError(f"status {status!r} is not running, succeeded, failed or cancelled")
    for name, at in (("created_at", created_at), ("finished_at", finished_at)):
        if at is None and name == "finished_at" and status == "running":
            continue
        if isinstance(at, bool) or not isinstance(at, int | float):
            raise TypeError(f"{name} is {type(at).__name__}, not a number")


def _marker_run(run_id: str, raw: bytes) -> Run:
    pipeline, status, created_at, finished_at = orjson.loads(raw)
    return Run(run_id, pipeline, {}, created_at, status, finished_at, {})


def _index_key(kind: bytes, run_id: bytes, at: float | None) -> bytes:
    """The expiry index key of a marker (``m``) or closed window (``k``) from ``at``."""
    return b"x" + _MS.pack(max(0, int((at or 0.0) * 1000))) + kind + run_id


def _indexed_at(kind: bytes, raw: bytes) -> float | None:
    """The time a stored marker or closed window expires from."""
    obj = orjson.loads(raw)
    at = obj[3] if kind == b"m" else obj["closed_at"]
    return float(at) if at is not None else None


def untrusted(path: Path) -> Path:
    """The flag file that says the store at ``path`` failed once and must be rebuilt."""
    return path.with_name(path.name + ".untrusted")


def open_store(folder: Path, topic: str, partition: int) -> Store:
    """The partition's store under ``folder`` (the state dir): trusted if it can be, else
    emptied, so its ``checkpoint`` is None and the caller rebuilds it from the changelog."""
    path = folder / f"{topic}-{partition}"
    path.parent.mkdir(parents=True, exist_ok=True)
    flag = untrusted(path)
    if flag.exists():
        log.warning("partition %d: local state failed before, rebuilding it", partition)
        return _wipe(path, flag, topic, partition)
    try:
        kv = RocksKV(path)
    except StoreUnusable as exc:
        log.warning("partition %d: local state is unusable, rebuilding it (%s)", partition, exc)
        return _wipe(path, flag, topic, partition)
    try:
        store = Store(kv, topic, partition)
        empty = next(iter(kv.scan(b"", b"\xff")), None) is None
    except StoreUnusable as exc:
        kv.close()
        log.warning("partition %d: local state is unusable, rebuilding it (%s)", partition, exc)
        return _wipe(path, flag, topic, partition)
    if store.checkpoint is None and not empty:
        log.warning(
            "partition %d: local state has no checkpoint this process can trust (stale, "
            "or another topic's): rebuilding it",
            partition,
        )
        store.clear()
    return store


def _wipe(path: Path, flag: Path, topic: str, partition: int) -> Store:
    shutil.rmtree(path, ignore_errors=True)
    flag.unlink(missing_ok=True)
    return Store(RocksKV(path), topic, partition)
