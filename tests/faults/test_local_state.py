"""The run table's local state under real faults: a ``headwater dev`` process killed with
SIGKILL, restarted on its own state dir (kept, deleted, or corrupted in the ways a disk
or an operator can), must still refuse every duplicate trigger. Kept state is trusted and
only the changelog's tail is read; anything else is rebuilt from the changelog, never
trusted."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import pytest

from headwater.runner.settings import Settings
from tests.conftest import Start
from tests.kafkatools import by_trigger, pipeline_file, publish, read_all, read_topic

pytestmark = pytest.mark.integration

FILES = {
    "once.yaml": pipeline_file("once", "test.once", {"noop": '{python: "once_tasks:noop"}'}),
    "once_tasks.py": "def noop(ctx):\n    return None\n",
}
IDS = [f"e{i}" for i in range(40)]


def stores(tmp_path: Path) -> list[Path]:
    """The control partitions' store folders the runner left (one per partition)."""
    return sorted(p for p in (tmp_path / "state").glob("*/*") if p.is_dir())


def garble_every_file(folder: Path) -> None:
    for path in folder.iterdir():
        if path.is_file():
            path.write_bytes(b"\x00garbage\xff" * 64)


def flip_table_bytes(folder: Path) -> None:
    """Flip bytes inside every table file (data on disk, not only in the write-ahead log):
    RocksDB opens the store, and a read of the damaged block fails its checksum."""
    from rocksdict import Rdict

    db = Rdict(str(folder))  # move what the write-ahead log holds into a table file
    db.flush()
    db.close()
    tables = list(folder.glob("*.sst"))
    assert tables, f"no table file in {folder}"
    for table in tables:
        data = bytearray(table.read_bytes())
        for i in range(0, min(len(data) // 2, 4096)):
            data[i] ^= 0x5A
        table.write_bytes(bytes(data))


DAMAGE = {
    "kept": None,
    "deleted": lambda folder: shutil.rmtree(folder),
    "garbled": garble_every_file,
    "bytes flipped": flip_table_bytes,
}
SAYS = {
    "kept": "restored from local state",
    "deleted": "rebuilt from the changelog",
    "garbled": "local state is unusable",
    "bytes flipped": "rebuilt from the changelog",
}


@pytest.mark.parametrize("damage", list(DAMAGE))
async def test_a_duplicate_is_refused_after_sigkill_whatever_became_of_the_local_state(
    settings: Settings, headwater_dev: Start, tmp_path: Path, damage: str
) -> None:
    runner = headwater_dev(FILES)
    await runner.output_shows("headwater dev:")
    completions = settings.topics.completions
    await publish(settings, "test.once", IDS)
    await read_topic(settings, completions, lambda rs: len(by_trigger(rs)) >= len(IDS))
    assert runner.process is not None
    runner.process.send_signal(signal.SIGKILL)
    runner.process.wait()
    folders = stores(tmp_path)
    assert len(folders) == settings.kafka.partitions, folders
    changelog_records = len(await read_all(settings, settings.topics.runs))
    hurt = DAMAGE[damage]
    if hurt is not None:
        for folder in folders:
            hurt(folder)

    again = headwater_dev(FILES)
    await again.output_shows("headwater dev:")
    await again.output_shows(SAYS[damage])
    await publish(settings, "test.once", [*IDS, "after"])  # every id again, and one new
    records = await read_topic(settings, completions, lambda rs: "after" in by_trigger(rs))
    twice = {i: types for i, types in by_trigger(records).items() if len(types) > 1}
    assert twice == {}, f"runs triggered twice after the restart: {twice}"
    out = again.output()
    if damage == "kept":  # only the changelog's tail was read
        tails = [
            int(line.split("local state: ")[1].split()[0])
            for line in out.splitlines()
            if "restored from local state" in line
        ]
        assert len(tails) == settings.kafka.partitions, out
        assert sum(tails) < changelog_records / 2, (tails, changelog_records)
        assert "rebuilt from the changelog" not in out
    else:
        assert "rebuilt from the changelog" in out
    assert again.process is not None and again.process.poll() is None
