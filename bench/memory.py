"""Memory: the peak resident set of a runner process working through a backlog.

The events topic is filled first; then a runner (``bench.runner_process``, the 100 mixed
pipelines) starts as a process of its own, so its memory is not the benchmark's, and runs
until the router group has committed to the end of the events topic. The figure is the
kernel's high-water mark of its resident set (``VmHWM``), read just before it is stopped.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.kafkatools import CommitWatch, ensure_log_topics, fill_events, until
from bench.processes import relay, stop
from headwater.runner.settings import Settings

STOP_WITHIN = 20.0


async def memory(settings: Settings, count: int, within: float) -> dict[str, Any]:
    """Peak RSS (MB) of a runner routing a backlog of ``count`` events, and how long that
    took from the process's start; fails after ``within`` seconds."""
    await ensure_log_topics(settings, {"default"})
    await fill_events(settings, count)
    with tempfile.TemporaryFile() as output:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.runner_process",
            settings.topics.prefix,
            stdout=output,
            stderr=asyncio.subprocess.STDOUT,
        )
        started = time.perf_counter()
        exited = asyncio.create_task(process.wait())
        try:
            async with CommitWatch(settings, "router", settings.topics.events) as watch:
                await until(watch.caught_up, within, exited, every=1.0)
            elapsed = time.perf_counter() - started
            status = _status(process.pid)
        finally:
            await stop(process, STOP_WITHIN)
            output.seek(0)
            relay("the runner process", output.read())
    return {
        "events": count,
        "peak_rss_mb": status["VmHWM"] / 1024,
        "rss_at_end_mb": status["VmRSS"] / 1024,
        "backlog_seconds": elapsed,
        "events_per_s": count / elapsed,
    }


def _status(pid: int) -> dict[str, int]:
    """The ``Vm*`` lines of ``/proc/PID/status``, in kB."""
    sizes = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name.startswith("Vm"):
            sizes[name] = int(value.split()[0])
    return sizes
