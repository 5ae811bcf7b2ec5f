"""``python -m bench.runner_process PREFIX [STAGE [COUNT]]``: one process of the benchmark.

STAGE says what it runs on the topics under PREFIX, until SIGTERM or SIGINT:

- ``memory`` (the default): the whole runner on the 100 mixed pipelines (the memory row);
- ``match``: the event router alone on the 100 mixed pipelines (the scale-out rows);
- ``runs``: the whole runner on the one-task no-op pipeline (the scale-out rows);
- ``batched``: the whole runner on the batching pipeline of the batched-runs row, its task
  returning how many events its run carried (the scale-out rows);
- ``stamped``: the whole runner on the one-task pipeline whose task returns when it
  started (the latency rows on several processes read it from the completions);
- ``bridge``: a bridge alone, pumping COUNT events from an in-memory source as fast as the
  backpressure lets it (the flood row), with the backpressure monitor of a bridges-only
  process; prints ``source drained`` once every event was acked.

It prints nothing per event, so the memory it holds is the runner's own. Its instance
name and partition count come from the environment (``HEADWATER_INSTANCE``,
``HEADWATER_KAFKA_PARTITIONS``), as for any headwater process.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import sys

from bench.batched import batched_pipeline
from bench.stages import MemorySource, hundred_pipelines, noop_pipeline
from headwater.bridges.pump import Pump
from headwater.runner.backpressure import Backpressure
from headwater.runner.engine import serve
from headwater.runner.log import kafka
from headwater.runner.observe.hooks import RunObserver
from headwater.runner.router import EventRouter
from headwater.runner.settings import Settings, Topics
from headwater.runner.supervise import supervise

STAGES = ("memory", "match", "runs", "batched", "stamped", "bridge")


async def run(prefix: str, stage: str, count: int) -> None:
    base = Settings.from_env()
    settings = Settings(
        kafka=base.kafka,
        topics=Topics(prefix=prefix),
        instance=base.instance,
        state_root=base.state_root,
        standby=base.standby,
        bounds=base.bounds,
    )
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    if stage == "match":
        await EventRouter(settings, hundred_pipelines()).run(stopping)
    elif stage == "bridge":
        await bridge(settings, count, stopping)
    else:
        pipelines = {
            "memory": hundred_pipelines,
            "runs": lambda: [noop_pipeline()],
            "batched": lambda: [batched_pipeline("bench.tasks:count_events")],
            "stamped": lambda: [noop_pipeline("bench.tasks:started")],
        }[stage]()
        await serve(settings, pipelines, [], RunObserver(), stopping)


async def bridge(settings: Settings, count: int, stopping: asyncio.Event) -> None:
    source = MemorySource(count)
    pressure = Backpressure(settings, (), router=False, bridges=True)
    pump = Pump(
        source,
        functools.partial(kafka.producer, settings),
        settings.topics,
        batch_size=1000,
        write_timeout=settings.kafka.write_timeout,
        valve=pressure.bridges,
        report=functools.partial(pressure.report, "bridge"),
    )

    async def drained() -> None:
        await source.done.wait()
        print(f"source drained: {source.acked} acked", flush=True)

    announce = asyncio.create_task(drained())
    await asyncio.gather(
        supervise("backpressure", pressure.run, stopping),
        supervise("bridge", pump.run, stopping),
    )
    announce.cancel()


def main() -> int:
    # Warnings, and the run table's restore lines (the markers rows read them).
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("headwater.runner.runs").setLevel(logging.INFO)
    args = sys.argv[1:]
    if not 1 <= len(args) <= 3 or (len(args) >= 2 and args[1] not in STAGES):
        print(__doc__, file=sys.stderr)
        return 2
    count = int(args[2]) if len(args) == 3 else 0
    asyncio.run(run(args[0], args[1] if len(args) >= 2 else "memory", count))
    return 0


if __name__ == "__main__":
    sys.exit(main())
