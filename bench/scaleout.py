"""Scale-out: the router, and the whole runner, on one and on two processes of this host.

headwater scales by processes: every process with its own ``HEADWATER_INSTANCE`` joins the
same consumer groups and takes a share of the partitions. These rows run N processes
(``bench.runner_process``) on a backlog and time only the part where all of them work. The
clock starts once every consumer group the stage uses is stable with N members (joining,
and the rebalance each join causes, take seconds and are not the rate), and stops when the
stage is done:

- match: the router group has committed the end of the events topic;
- runs: a ``read_committed`` subscriber of the completions topic has seen every run end;
- batched: that subscriber has seen runs end that carried every event (``max_events:
  1000, max_wait: 1s``, as in the batched-runs row).

One row by hand, e.g. three routers on six partitions::

    PYTHONPATH=. .venv/bin/python -m bench.scaleout match 3 600000 --partitions 6

The figure is the work done between those two moments over the time between them; over
the same span, the CPU time of the runner processes and of the whole machine (``/proc``)
say whether the machine was the limit. The topics have 4 partitions, so two processes get
two each. One process is measured the same way in the same run, so the ratio says how the
stage scales on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from bench.kafkatools import CommitWatch, ensure_log_topics, fill_events
from bench.processes import relay, stop
from headwater.runner.log import kafka
from headwater.runner.settings import Settings

PARTITIONS = 4
STOP_WITHIN = 20.0
GROUPS = {
    "match": ("router",),
    "runs": ("router", "control", "workers.default"),
    "batched": ("router", "control", "workers.default"),
}


async def scale_out(
    settings: Settings,
    stage: str,
    processes: int,
    count: int,
    within: float,
    partitions: int = PARTITIONS,
) -> dict[str, Any]:
    """Events (match, batched) or runs (runs) per second done by ``processes`` runner
    processes on a backlog of ``count`` events, while every one of them holds partitions."""
    settings = dataclasses.replace(
        settings, kafka=dataclasses.replace(settings.kafka, partitions=partitions)
    )
    await ensure_log_topics(settings, {"default"})
    await fill_events(settings, count)
    progress: CommitWatch | Completed = (
        CommitWatch(settings, "router", settings.topics.events)
        if stage == "match"
        else Completed(settings, stage)
    )
    with contextlib.ExitStack() as files:
        outputs = [files.enter_context(tempfile.TemporaryFile()) for _ in range(processes)]
        state = files.enter_context(tempfile.TemporaryDirectory(prefix="hw-bench-state-"))
        children = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.runner_process",
                settings.topics.prefix,
                stage,
                env={
                    **os.environ,
                    "HEADWATER_INSTANCE": f"bench-{i}",
                    "HEADWATER_KAFKA_PARTITIONS": str(partitions),
                    "HEADWATER_STATE_DIR": state,
                },
                stdout=output,
                stderr=asyncio.subprocess.STDOUT,
            )
            for i, output in enumerate(outputs)
        ]
        deadline = time.monotonic() + within
        try:
            async with progress:
                groups = [settings.topics.group(role) for role in GROUPS[stage]]
                while not await stable(settings, groups, processes):
                    _check(children, deadline)
                    await asyncio.sleep(0.1)
                started, done_before = time.monotonic(), await progress.processed()
                cpu_before = _CpuTimes.now(children)
                while (done := await progress.processed()) < count:
                    _check(children, deadline)
                    await asyncio.sleep(0.1)
                elapsed = time.monotonic() - started
                cpu = _CpuTimes.now(children).since(cpu_before, elapsed)
        finally:
            for i, (child, output) in enumerate(zip(children, outputs, strict=True)):
                await stop(child, STOP_WITHIN)
                output.seek(0)
                relay(f"runner process {i} ({stage})", output.read())
    timed = done - done_before
    figures: dict[str, Any] = {"processes": processes, "count": count, "timed": timed, **cpu}
    # None when the backlog was gone before every process held partitions (tiny volumes)
    figures["per_s"] = timed / elapsed if timed and elapsed else None
    if isinstance(progress, Completed):
        figures["completions_published"] = progress.published
    return figures


@dataclasses.dataclass(frozen=True)
class _CpuTimes:
    """CPU time (s) used so far by the runner processes, and by the whole machine (busy
    and all, over every core), from ``/proc``."""

    processes: float
    machine_busy: float
    machine_all: float

    @classmethod
    def now(cls, children: list[asyncio.subprocess.Process]) -> _CpuTimes:
        tick = os.sysconf("SC_CLK_TCK")
        used = 0
        for child in children:
            fields = Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()
            used += int(fields[11]) + int(fields[12])  # utime, stime
        cpu = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = cpu[3] + cpu[4]  # idle, iowait
        return cls(used / tick, (sum(cpu) - idle) / tick, sum(cpu) / tick)

    def since(self, before: _CpuTimes, elapsed: float) -> dict[str, float]:
        """Cores the runner processes kept busy, and how busy the machine was (0..1);
        nothing when too little time passed to tell (tiny volumes)."""
        if self.machine_all - before.machine_all < 1:
            return {}
        return {
            "runner_cores": (self.processes - before.processes) / elapsed,
            "machine_busy": (self.machine_busy - before.machine_busy)
            / (self.machine_all - before.machine_all),
        }


def _check(children: list[asyncio.subprocess.Process], deadline: float) -> None:
    for child in children:
        if child.returncode is not None:
            raise RuntimeError(f"a runner process exited with status {child.returncode}")
    if time.monotonic() > deadline:
        raise TimeoutError("the scale-out row did not finish in time")


async def stable(settings: Settings, groups: list[str], members: int) -> bool:
    """Whether each consumer group is stable with exactly ``members`` members."""
    admin = AIOKafkaAdminClient(**settings.kafka.client_options())
    await admin.start()
    try:
        for name in groups:  # one at a time: aiokafka misreads a reply about several
            for response in await admin.describe_consumer_groups([name]):
                for group in response.groups:  # (error, id, state, type, protocol, members, ..)
                    if group[2] != "Stable" or len(group[5]) != members:
                        return False
        return True
    finally:
        await admin.close()


class Completed:
    """How many runs (``runs``) or events in runs (``batched``) a ``read_committed``
    subscriber of the completions topic has seen end (read in the background)."""

    def __init__(self, settings: Settings, stage: str) -> None:
        self._settings = settings
        self._batched = stage == "batched"
        self._runs: dict[str, int] = {}  # run id -> what it counts for
        self.published = 0  # completion events, duplicates included (there must be none)
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Completed:
        self._task = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stopping.set()
        if self._task is not None:
            await self._task

    async def processed(self) -> int:
        if self._task is not None and self._task.done():
            self._task.result()  # raises what stopped it
        return sum(self._runs.values())

    async def _read(self) -> None:
        topic = self._settings.topics.completions
        consumer = kafka.consumer(self._settings, group=None)
        await consumer.start()
        try:
            partitions = [TopicPartition(topic, p) for p in range(self._settings.kafka.partitions)]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            while not self._stopping.is_set():
                batch = await consumer.getmany(timeout_ms=100, max_records=10_000)
                for records in batch.values():
                    for record in records:
                        self.published += 1
                        run = orjson.loads(record.value)
                        worth = run["tasks"]["t"]["output"]["events"] if self._batched else 1
                        self._runs[run["run_id"]] = worth
        finally:
            await consumer.stop()


async def _main(stage: str, processes: int, count: int, partitions: int) -> None:
    from bench.kafkatools import delete_topics
    from headwater.runner.settings import Topics

    prefix = f"scale{uuid.uuid4().hex[:8]}."
    settings = dataclasses.replace(Settings.from_env(), topics=Topics(prefix=prefix))
    try:
        figures = await scale_out(settings, stage, processes, count, 600, partitions)
    finally:
        await delete_topics(settings, prefix)
    print(orjson.dumps(figures, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("stage", choices=sorted(GROUPS))
    parser.add_argument("processes", type=int)
    parser.add_argument("count", type=int)
    parser.add_argument("--partitions", type=int, default=PARTITIONS)
    args = parser.parse_args()
    asyncio.run(_main(args.stage, args.processes, args.count, args.partitions))
