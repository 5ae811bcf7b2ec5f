"""The consume->produce baseline written as a faust-streaming agent, for comparison.

``forward_with_faust`` runs ``python -m bench.faust_forward ...`` as a process of its own:
a faust app whose one agent reads the source topic and sends each value on to the target
topic, with acks=all and a 5 ms linger like the raw loop (faust's producer is not
idempotent outside its exactly-once mode). The agent times itself like the raw loop does,
from its first record until every write of ``count`` records was acknowledged, and
prints ``RESULT {"rate": ...}``. faust's web server is off and its data directory is a
temporary one, never in the repository.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from typing import Any

import orjson

from bench.processes import relay, stop
from headwater.runner.settings import Settings

MARK = b"RESULT "
STOP_WITHIN = 15.0


async def forward_with_faust(
    settings: Settings, source: str, target: str, count: int, within: float
) -> float:
    """Records per second the faust agent forwarded; fails after ``within`` seconds."""
    with tempfile.TemporaryDirectory(prefix="hw-bench-faust-") as datadir:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.faust_forward",
            settings.kafka.bootstrap,
            source,
            target,
            str(count),
            datadir,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        printed: list[bytes] = []
        try:
            result = await asyncio.wait_for(_result(process.stdout, printed), within)
        except TimeoutError:
            raise RuntimeError(f"the faust worker gave no result in {within:.0f}s") from None
        finally:
            await stop(process, STOP_WITHIN)
            relay("the faust worker", b"".join(printed))
    rate: float = result["rate"]
    return rate


async def _result(stdout: asyncio.StreamReader | None, printed: list[bytes]) -> dict[str, Any]:
    """Read the worker's output up to its result line, keeping the rest in ``printed``."""
    assert stdout is not None
    async for line in stdout:
        if line.startswith(MARK):
            report: dict[str, Any] = orjson.loads(line[len(MARK) :])
            return report
        printed.append(line)
    raise RuntimeError("the faust worker exited without a result (see the log)")


# --- the worker process -------------------------------------------------------------------


def main() -> int:
    bootstrap, source, target, count, datadir = sys.argv[1:]
    import faust  # here, so that the benchmark itself never imports faust

    app = faust.App(
        f"{source}.faust",
        broker=[f"kafka://{address}" for address in bootstrap.split(",")],
        key_serializer="raw",
        value_serializer="raw",
        producer_acks=-1,
        producer_linger=0.005,
        web_enabled=False,
        datadir=datadir,
    )
    inbound, outbound = app.topic(source), app.topic(target)
    wanted, out = int(count), sys.stdout.buffer

    @app.agent(inbound)
    async def forward(stream: Any) -> None:
        sent: list[Any] = []
        started = 0.0
        async for key, value in stream.items():
            started = started or time.perf_counter()
            sent.append(await outbound.send(key=key, value=value))
            if len(sent) == wanted:
                await asyncio.gather(*sent)
                rate = wanted / (time.perf_counter() - started)
                out.write(MARK + orjson.dumps({"rate": rate}) + b"\n")
                out.flush()

    worker = faust.Worker(app, loglevel="warning", quiet=True, redirect_stdouts=False)
    # Without a terminal spinner: faust spins it on every log record, so it sets the root
    # logger to DEBUG for the worker's lifetime, which costs a third of the throughput.
    worker.spinner = None
    worker.execute_from_commandline()
    return 0


if __name__ == "__main__":
    sys.exit(main())
