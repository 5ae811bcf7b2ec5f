"""Markers and restore: a runner whose run table holds millions of finished runs.

The ``runs`` changelog is filled first with finished-run records as headwater writes them
(a finished run's record is its marker; each in the partition of its run id), so the table
of N markers is built in a minute instead of N runs' time. Then a runner process
(``bench.runner_process``, the one-task pipeline) starts on it, and its log says when
each control partition's table is restored (``run table rebuilt from the changelog`` or
``restored from local state``, with the records read and the seconds). Measured, each
time in a process of its own:

- **rebuild** at each size in ``counts`` (the state dir emptied first: a new host, a lost
  disk): the time to take over every partition from the changelog alone, and the
  runner's peak RSS (``VmHWM``) with the table restored, so memory at 1M and 10M markers
  can be compared in one run;
- **local**: the same runner restarted on the state it left: only the changelog's tail
  (nothing, here) is read;
- **standby**: a process following the changelog as a standby while another owns the
  partitions takes them over when that one is killed; the time from the kill to every
  partition restored, against the same failover without a standby;
- the store's bytes on disk per marker, and the changelog's bytes per marker (the
  records written, as Kafka stores them uncompressed; compaction keeps one per run).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from bench.kafkatools import ensure_log_topics
from bench.memory import _status
from bench.processes import relay, stop
from headwater.runner.log import kafka
from headwater.runner.log.writer import partition_for, record_size
from headwater.runner.runs.machine import Run
from headwater.runner.settings import Settings

STOP_WITHIN = 60.0
CHUNK = 100_000
_RESTORED = re.compile(
    r"partition (\d+): run table (rebuilt from the changelog|restored from local state): "
    r"(\d+) changelog record\(s\) in ([\d.]+) s"
)


def marker_record(i: int) -> tuple[bytes, bytes]:
    """A finished run's changelog record, as the control processor writes it (a finished
    run's record is its marker)."""
    h = f"{i:032x}"
    run_id = f"{h[:8]}-{h[8:12]}-5{h[13:16]}-8{h[17:20]}-{h[20:]}"
    at = 1_700_000_000.0 + i / 1000
    run = Run(run_id, "bench-noop", {}, at, "succeeded", at + 0.003, {})
    return run_id.encode(), orjson.dumps(run.to_json())


async def fill_markers(settings: Settings, first: int, last: int) -> int:
    """Write the records of markers ``first`` to ``last`` - 1 to the changelog, each in
    its run's partition; returns the bytes written (as Kafka counts a record)."""
    producer = kafka.producer(settings, max_batch_size=1024 * 1024, linger_ms=20)
    await producer.start()
    written = 0
    partitions = settings.kafka.partitions
    try:
        writer = kafka.BatchWriter(producer)
        for start in range(first, last, CHUNK):
            for i in range(start, min(last, start + CHUNK)):
                key, value = marker_record(i)
                written += record_size(key, value)
                partition = partition_for(key, partitions)
                await writer.add(settings.topics.runs, value, key=key, partition=partition)
            futures = await writer.flush()
            await kafka.all_acknowledged(futures, settings.kafka.write_timeout * 4)
    finally:
        await producer.stop()
    return written


class Runner:
    """One ``bench.runner_process`` on the benchmark's topics and a state dir of its own."""

    def __init__(self, settings: Settings, state: Path, instance: str, standby: bool) -> None:
        self._settings, self._state = settings, state
        self._instance, self._standby = instance, standby
        self._output = tempfile.NamedTemporaryFile(prefix="hw-bench-runner-")  # noqa: SIM115
        self.process: asyncio.subprocess.Process | None = None
        self.started = 0.0

    async def start(self) -> Runner:
        import os

        env = {
            **os.environ,
            "HEADWATER_STATE_DIR": str(self._state),
            "HEADWATER_INSTANCE": self._instance,
            "HEADWATER_STANDBY": "1" if self._standby else "0",
        }
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.runner_process",
            self._settings.topics.prefix,
            "runs",
            stdout=self._output,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
        )
        self.started = time.perf_counter()
        return self

    def output(self) -> str:
        return Path(self._output.name).read_text(errors="replace")

    def restores(self) -> list[tuple[int, str, int, float]]:
        """(partition, how, records read, seconds) of every restore the runner logged."""
        return [
            (int(m[1]), m[2], int(m[3]), float(m[4])) for m in _RESTORED.finditer(self.output())
        ]

    async def restored(self, within: float, after: int = 0) -> list[tuple[int, str, int, float]]:
        """Wait until every partition was restored (past the first ``after`` restores)."""
        deadline = time.monotonic() + within
        while len({r[0] for r in self.restores()[after:]}) < self._settings.kafka.partitions:
            assert self.process is not None
            if self.process.returncode is not None:
                raise RuntimeError(f"the runner exited early:\n{self.output()[-5000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no full restore within {within:.0f}s")
            await asyncio.sleep(0.2)
        return self.restores()[after:]

    def peak_rss_mb(self) -> float:
        assert self.process is not None
        return _status(self.process.pid)["VmHWM"] / 1024

    async def stop(self, kill: bool = False) -> None:
        assert self.process is not None
        if kill:
            self.process.send_signal(signal.SIGKILL)
        await stop(self.process, STOP_WITHIN)
        relay(f"runner {self._instance}", self.output().encode()[-20_000:])
        self._output.close()


async def take_over(
    settings: Settings, state: Path, instance: str, within: float
) -> dict[str, Any]:
    """A runner starts on ``state`` and restores every partition: how, how long, its RSS."""
    runner = await Runner(settings, state, instance, standby=False).start()
    try:
        restores = await runner.restored(within)
        wall = time.perf_counter() - runner.started
        rss = runner.peak_rss_mb()
    finally:
        await runner.stop()
    return {
        "how": sorted({r[1] for r in restores}),
        "records_read": sum(r[2] for r in restores),
        "restore_seconds": sum(r[3] for r in restores),
        "start_to_restored_seconds": wall,
        "peak_rss_mb": rss,
    }


def disk_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


async def markers(settings: Settings, counts: tuple[int, ...], within: float) -> dict[str, Any]:
    await ensure_log_topics(settings, {"default"})
    root = Path(tempfile.mkdtemp(prefix="hw-bench-markers-"))
    state = root / "a"
    figures: dict[str, Any] = {"counts": list(counts), "rebuild": {}}
    filled = changelog_bytes = 0
    try:
        for count in counts:
            changelog_bytes += await fill_markers(settings, filled, count)
            filled = count
            shutil.rmtree(state, ignore_errors=True)
            rebuilt = await take_over(settings, state, "bench-a", within)
            rebuilt["store_bytes_per_marker"] = disk_bytes(state) / count
            figures["rebuild"][str(count)] = rebuilt
        figures["local"] = await take_over(settings, state, "bench-a", within)
        figures["changelog_bytes_per_marker"] = changelog_bytes / filled
        figures["markers"] = filled
        figures["failover"] = await failover(settings, root, within)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return figures


async def failover(settings: Settings, root: Path, within: float) -> dict[str, Any]:
    """Process ``a`` owns every partition; ``b`` (with or without a standby) waits in the
    group with no partition (``a`` joined first, and partitions move only on a change).
    ``a`` is killed: the seconds from the kill to ``b`` having restored every partition."""
    out: dict[str, Any] = {}
    for standby in (False, True):
        shutil.rmtree(root / "b", ignore_errors=True)
        owner = await Runner(settings, root / "a", "bench-a", standby=False).start()
        await owner.restored(within)
        second = await Runner(settings, root / "b", "bench-b", standby=standby).start()
        try:
            await _settled(second, within)  # in the group, its first partitions restored
            if standby:
                await _caught_up(second, within)
            before = len(second.restores())
            killed = time.perf_counter()
            await owner.stop(kill=True)
            restores = await second.restored(within + 60, after=before)
            took = time.perf_counter() - killed
            rss = second.peak_rss_mb()
        finally:
            await second.stop()
        out["standby" if standby else "no_standby"] = {
            "kill_to_restored_seconds": took,
            "restore_seconds": sum(r[3] for r in restores),
            "records_read": sum(r[2] for r in restores),
            "how": sorted({r[1] for r in restores}),
            "peak_rss_mb": rss,
            "standby_disk_bytes": disk_bytes(root / "b"),
        }
    return out


async def _settled(runner: Runner, within: float, quiet: float = 5.0) -> None:
    """Wait until the runner restored what the group gave it and nothing more came for
    ``quiet`` seconds."""
    deadline = time.monotonic() + within
    seen, since = -1, time.monotonic()
    while True:
        count = len(runner.restores())
        if count != seen:
            seen, since = count, time.monotonic()
        elif count and time.monotonic() - since >= quiet:
            return
        if time.monotonic() > deadline:
            raise TimeoutError("the second runner restored nothing")
        await asyncio.sleep(0.5)


async def _caught_up(runner: Runner, within: float) -> None:
    deadline = time.monotonic() + within
    while "standby caught up" not in runner.output():
        if time.monotonic() > deadline:
            raise TimeoutError("the standby did not catch up")
        await asyncio.sleep(0.5)


def main() -> None:
    """``python -m bench.markers [--counts 1000000,10000000]``: these rows alone."""
    import argparse
    import json

    from bench.kafkatools import delete_topics
    from bench.run import marker_rows, print_table, settings_for

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--counts", default="1000000,10000000")
    parser.add_argument("--within", type=float, default=1_200.0)
    args = parser.parse_args()
    counts = tuple(int(n) for n in args.counts.split(","))
    prefix = f"benchk{time.time_ns() % 10**8}"

    async def go() -> dict[str, Any]:
        settings = settings_for(f"{prefix}.")
        try:
            return await markers(settings, counts, args.within)
        finally:
            await delete_topics(settings, prefix)

    figures = asyncio.run(go())
    print_table(marker_rows(figures))
    out = Path(__file__).parent / "results" / "markers.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
