"""``python -m bench.runner_process PREFIX [STAGE]``: one runner process of the benchmark.

STAGE says what it runs on the topics under PREFIX, until SIGTERM or SIGINT:

- ``memory`` (the default): the whole runner on the 100 mixed pipelines (the memory row);
- ``match``: the event router alone on the 100 mixed pipelines (the scale-out rows);
- ``runs``: the whole runner on the one-task no-op pipeline (the scale-out rows);
- ``batched``: the whole runner on the batching pipeline of the batched-runs row, its task
  returning how many events its run carried (the scale-out rows).

It prints nothing per event, so the memory it holds is the runner's own. Its instance
name and partition count come from the environment (``HEADWATER_INSTANCE``,
``HEADWATER_KAFKA_PARTITIONS``), as for any headwater process.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from bench.batched import batched_pipeline
from bench.stages import hundred_pipelines, noop_pipeline
from headwater.runner.engine import serve
from headwater.runner.observe.hooks import RunObserver
from headwater.runner.router import EventRouter
from headwater.runner.settings import Settings, Topics

STAGES = ("memory", "match", "runs", "batched")


async def run(prefix: str, stage: str) -> None:
    base = Settings.from_env()
    settings = Settings(
        kafka=base.kafka,
        topics=Topics(prefix=prefix),
        instance=base.instance,
        state_root=base.state_root,
        standby=base.standby,
    )
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    if stage == "match":
        await EventRouter(settings, hundred_pipelines()).run(stopping)
    else:
        pipelines = {
            "memory": hundred_pipelines,
            "runs": lambda: [noop_pipeline()],
            "batched": lambda: [batched_pipeline("bench.tasks:count_events")],
        }[stage]()
        await serve(settings, pipelines, [], RunObserver(), stopping)


def main() -> int:
    # Warnings, and the run table's restore lines (the markers rows read them).
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("headwater.runner.runs").setLevel(logging.INFO)
    if len(sys.argv) not in (2, 3) or (len(sys.argv) == 3 and sys.argv[2] not in STAGES):
        print(__doc__, file=sys.stderr)
        return 2
    asyncio.run(run(sys.argv[1], sys.argv[2] if len(sys.argv) == 3 else "memory"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
