"""A control partition's local store, on a real RocksDB in a temporary folder: markers
and closed windows' event ids live on disk only, a replayed changelog tail changes
nothing, expiry reads only what expires, and a store that may be wrong is never trusted."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.runner.log.records import RunRequested
from headwater.runner.model.pipeline import Pipeline, Task, Trigger
from headwater.runner.runs import changelog
from headwater.runner.runs.machine import Run
from headwater.runner.runs.store import (
    MemoryKV,
    RocksKV,
    Store,
    StoreLocked,
    open_store,
    untrusted,
)
from headwater.runner.runs.table import Changes, Partition, RunTable
from headwater.runner.runs.windows import Closed, Window

TOPIC = "hw.runs"
PIPELINE = Pipeline("p", (Trigger("t"),), (Task("a", "python", "m:a"),))


def run(run_id: str, status: str = "succeeded", finished_at: float | None = 100.0) -> Run:
    return Run(run_id, "p", {"id": run_id}, 1.0, status, finished_at)  # type: ignore[arg-type]


def fold_all(store: Store, records: list[tuple[bytes, bytes | None]], offset: int) -> None:
    batch = store.batch()
    for key, value in records:
        batch.fold(key, value)
    batch.commit(offset)


def test_a_duplicate_is_refused_by_a_marker_that_is_only_on_disk(tmp_path: Path) -> None:
    store = open_store(tmp_path, TOPIC, 0)
    table = RunTable({"p": PIPELINE}, 3600.0, clock=lambda: 200.0, rand=lambda: 0.5)
    list(table.restore(0, Partition.load(store)))
    fold_all(store, [changelog.run_record(run("r1"))], 1)
    assert store.marker("r1") == Run("r1", "p", {}, 1.0, "succeeded", 100.0, {})
    refused = Changes()
    assert table.apply(0, RunRequested("r1", "p", {"id": "r1"}), refused) is None
    assert refused == Changes()  # nothing changed, nothing caused
    table.clear()  # closes the store

    again = open_store(tmp_path, TOPIC, 0)  # the same folder, opened afresh
    assert again.checkpoint == 1 and again.marker("r1") is not None
    assert Partition.load(again).runs == {}  # a finished run is not loaded into memory
    again.close()


def test_running_runs_and_open_windows_come_back_markers_stay_on_disk(tmp_path: Path) -> None:
    store = open_store(tmp_path, TOPIC, 3)
    window = changelog.window_record("w", Window("w", "p", 0, None, 5.0, 5.0))[1]
    fold_all(
        store,
        [
            changelog.run_record(run("live", "running", None)),
            changelog.run_record(run("done")),
            (b"window:w", window),
        ],
        7,
    )
    loaded = Partition.load(store)
    assert list(loaded.runs) == ["live"] and list(loaded.windows) == ["w"]
    assert loaded.run("done") is not None and loaded.run("nope") is None
    store.close()


def test_expiry_reads_only_what_is_due_and_removes_it_everywhere(tmp_path: Path) -> None:
    store = open_store(tmp_path, TOPIC, 0)
    records = [changelog.run_record(run(f"r{i:03}", finished_at=float(i))) for i in range(200)]
    closed = Closed("c1", "w", 50.0, (("/s", "e1"),))
    records.append(changelog.closed_record(closed, "c1"))
    fold_all(store, records, len(records))
    markers, closed_ids = store.due(before=60.0, limit=1_000)
    assert markers == [f"r{i:03}" for i in range(60)]  # finished at 60.0 exactly: kept
    assert closed_ids == ["c1"]
    assert store.due(before=60.0, limit=10) == ([f"r{i:03}" for i in range(10)], [])
    # Tombstones (the changelog's, after the sweep's commit) remove markers, ids and index.
    fold_all(store, [(f"r{i:03}".encode(), None) for i in range(60)], 300)
    fold_all(store, [changelog.closed_record(None, "c1")], 301)
    assert store.marker("r000") is None and store.marker("r060") is not None
    assert store.closed_run("w", "/s", "e1") is None
    assert store.due(before=60.0, limit=1_000) == ([], [])
    kv = store._kv
    left = [key for key, _ in kv.scan(b"x", b"y")]
    assert len(left) == 140  # the index holds exactly what is still kept
    store.close()


def test_a_stale_store_or_another_partitions_is_not_trusted(tmp_path: Path) -> None:
    store = open_store(tmp_path, TOPIC, 0)
    fold_all(store, [changelog.run_record(run("r1"))], 1)
    store.close()
    other = open_store(tmp_path, "other.runs", 0)  # another topic's folder: its own
    assert other.checkpoint is None
    other.close()
    kv = RocksKV(tmp_path / f"{TOPIC}-0")  # last brought up to date a day ago
    meta = orjson.loads(kv.get(b"o") or b"{}")
    kv.write({b"o": orjson.dumps({**meta, "at": time.time() - 86400})})
    kv.close()
    stale = open_store(tmp_path, TOPIC, 0)
    assert stale.checkpoint is None and stale.marker("r1") is None  # emptied: rebuilt
    stale.close()


@pytest.mark.parametrize("damage", ["garbage files", "flagged after a failed read"])
def test_a_damaged_store_is_emptied_never_trusted(tmp_path: Path, damage: str) -> None:
    store = open_store(tmp_path, TOPIC, 0)
    fold_all(store, [changelog.run_record(run("r1"))], 1)
    store.close()
    folder = tmp_path / f"{TOPIC}-0"
    if damage == "garbage files":
        for path in folder.iterdir():
            path.write_bytes(b"\xffnot rocksdb\x00" * 10)
    else:
        untrusted(folder).touch()
    rebuilt = open_store(tmp_path, TOPIC, 0)
    assert rebuilt.checkpoint is None and rebuilt.marker("r1") is None
    assert not untrusted(folder).exists()
    rebuilt.close()


# A changelog of one partition: records of a few run ids and closed windows, in any order.
RUN_IDS = st.sampled_from(["a", "b", "c"])
RECORDS = st.lists(
    st.one_of(
        st.tuples(RUN_IDS, st.sampled_from(["running", "succeeded", "failed", None])),
        st.tuples(RUN_IDS.map(lambda r: "closed:" + r), st.booleans()),
    ),
    max_size=12,
)


def encode(spec: tuple[str, object], i: int) -> tuple[bytes, bytes | None]:
    name, what = spec
    if name.startswith("closed:"):
        closed = Closed(name[7:], "w", float(i), (("/s", f"e{i}"), ("/s", "shared")))
        return changelog.closed_record(closed if what else None, name[7:])
    if what is None:
        return name.encode(), None
    finished = None if what == "running" else float(i)
    return changelog.run_record(run(name, str(what), finished))


@settings(max_examples=300, deadline=None)
@given(records=RECORDS, held=st.integers(0, 12), behind=st.integers(0, 12))
def test_replaying_a_tail_the_store_already_has_changes_nothing(
    records: list[tuple[str, object]], held: int, behind: int
) -> None:
    """A store holds the first ``held`` records but its checkpoint lags ``behind`` them (a
    crash between a write and the next, a conservative offset): folding the changelog
    from the checkpoint on ends with what folding it once does."""
    log = [encode(spec, i) for i, spec in enumerate(records)]
    held = min(held, len(log))
    checkpoint = max(0, held - behind)
    once, replayed = MemoryKV(), MemoryKV()
    fold_all(Store(once, TOPIC, 0), log, len(log))
    store = Store(replayed, TOPIC, 0)
    fold_all(store, log[:held], checkpoint)
    fold_all(store, log[checkpoint:], len(log))
    once.data.pop(b"o")
    replayed.data.pop(b"o")
    assert once.data == replayed.data


def test_a_store_open_elsewhere_is_refused_never_wiped(tmp_path: Path) -> None:
    """Two processes on one state dir (one ``HEADWATER_INSTANCE``): the second is told,
    and the first's store is left as it is."""
    first = open_store(tmp_path, TOPIC, 0)
    fold_all(first, [changelog.run_record(run("r1"))], 1)
    with pytest.raises(StoreLocked, match="in use by another process"):
        open_store(tmp_path, TOPIC, 0)
    assert first.marker("r1") is not None and first.checkpoint == 1
    first.close()
