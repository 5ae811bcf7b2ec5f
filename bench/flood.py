"""Flood: far more events offered than the runner can run, end to end through a bridge.

A bridge process (``bench.runner_process ... bridge COUNT``) pumps COUNT events from an
in-memory source that offers them as fast as it is asked, into ``events``; a runner
process (``runs``: router, control processor, worker, one no-op task per event) works
them off. Backpressure is what keeps the flood where it came from: the router stops while
the runs pending downstream pass their bound, the bridge stops pulling while the events
waiting for the router pass theirs, so the in-memory source stays the buffer.

Measured, sampling the consumer groups' lag every half second: the peak RSS of each
process (the kernel's ``VmHWM``, read before it is stopped), the largest backlog of each
kind (events not routed, runs pending in control, task requests not done), the events
lost (offered but never completed; must be 0) and completed twice (must be 0), and the
time from the processes' start until every run completed.

One row by hand: ``PYTHONPATH=. .venv/bin/python -m bench.flood 200000``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from bench.kafkatools import ensure_log_topics
from bench.processes import relay, stop
from bench.scaleout import Completed
from headwater.runner.log.lag import LagReader, runs_in
from headwater.runner.settings import Settings

STOP_WITHIN = 20.0
SAMPLE_EVERY = 0.5


async def flood(settings: Settings, count: int, within: float) -> dict[str, Any]:
    await ensure_log_topics(settings, {"default"})
    topics = settings.topics
    wanted = [
        (topics.group("router"), topics.events),
        (topics.group("control"), topics.control),
        (topics.group("workers.default"), topics.tasks("default")),
    ]
    peaks = dict.fromkeys(("events_not_routed", "runs_pending", "tasks_not_done"), 0)
    with (
        tempfile.TemporaryFile() as runner_out,
        tempfile.TemporaryFile() as bridge_out,
        tempfile.TemporaryDirectory(prefix="hw-bench-state-") as state,
    ):
        env = {**os.environ, "HEADWATER_STATE_DIR": state}
        started = time.monotonic()
        runner = await _child(settings, ["runs"], env, runner_out, "flood-runner")
        bridge = await _child(settings, ["bridge", str(count)], env, bridge_out, "flood-bridge")
        children = {"runner": runner, "bridge": bridge}
        rss: dict[str, float] = {}
        try:
            async with Completed(settings, "runs") as completed, LagReader(settings) as lags:
                while await completed.processed() < count:
                    for name, child in children.items():
                        if child.returncode is not None:
                            raise RuntimeError(f"the {name} process exited early")
                    if time.monotonic() - started > within:
                        raise TimeoutError(f"the flood did not drain within {within:.0f}s")
                    found = await lags.read(wanted)
                    events, control, tasks = (found[w] for w in wanted)
                    peaks["events_not_routed"] = max(
                        peaks["events_not_routed"], sum(p.lag for p in events.values())
                    )
                    pending = sum(p.lag + runs_in(p.metadata) for p in control.values())
                    peaks["runs_pending"] = max(peaks["runs_pending"], pending)
                    peaks["tasks_not_done"] = max(
                        peaks["tasks_not_done"], sum(p.lag for p in tasks.values())
                    )
                    await asyncio.sleep(SAMPLE_EVERY)
                drained = time.monotonic() - started
                rss = {name: _peak_rss_mb(child.pid) for name, child in children.items()}
                await asyncio.sleep(1.0)  # a duplicate completion would arrive by now
                distinct, published = await completed.processed(), completed.published
        finally:
            for child in children.values():
                await stop(child, STOP_WITHIN)
            for name, output in (("runner", runner_out), ("bridge", bridge_out)):
                output.seek(0)
                relay(f"the flood's {name} process", output.read())
    return {
        "events": count,
        "lost": count - distinct,
        "duplicates": published - distinct,
        "drain_seconds": drained,
        "runs_per_s": count / drained,
        "peak_rss_mb": rss,
        "max_backlog": peaks,
        "bounds": dataclasses.asdict(settings.bounds),
    }


async def _child(
    settings: Settings, stage: list[str], env: dict[str, str], output: Any, instance: str
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.runner_process",
        settings.topics.prefix,
        *stage,
        env={**env, "HEADWATER_INSTANCE": instance},
        stdout=output,
        stderr=asyncio.subprocess.STDOUT,
    )


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


async def _main(count: int) -> None:
    from bench.kafkatools import delete_topics
    from headwater.runner.settings import Topics

    prefix = f"flood{uuid.uuid4().hex[:8]}."
    settings = dataclasses.replace(Settings.from_env(), topics=Topics(prefix=prefix))
    try:
        figures = await flood(settings, count, 3600)
    finally:
        await delete_topics(settings, prefix)
    print(orjson.dumps(figures, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("count", type=int)
    asyncio.run(_main(parser.parse_args().count))
