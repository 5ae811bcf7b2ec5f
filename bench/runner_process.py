"""``python -m bench.runner_process PREFIX``: one runner process for the memory row.

It serves the 100 mixed pipelines on the topics under PREFIX until SIGTERM or SIGINT, and
prints nothing per event, so the memory it holds is the runner's own.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from bench.stages import hundred_pipelines
from headwater.runner.engine import serve
from headwater.runner.hooks import RunObserver
from headwater.runner.settings import Settings, Topics


async def run(prefix: str) -> None:
    base = Settings.from_env()
    settings = Settings(kafka=base.kafka, topics=Topics(prefix=prefix))
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await serve(settings, hundred_pipelines(), [], RunObserver(), stopping)


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    asyncio.run(run(sys.argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
