"""``python -m bench.ab TAG``: the rows an A/B comparison of the hot paths needs, in one
go (about 100 s): the raw consume->produce baseline, match (the router over 100
pipelines), runs end to end, batched runs, and
latency at 1k and 5k events/s offered. Prints one JSON line, rates also as ratios to the
baseline measured a moment before. ``bench/ab.sh COMMIT...`` runs it for each commit (and
the working tree), interleaved, so that noise on a shared machine hits every side alike.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from typing import Any

import orjson

from bench.baselines import raw_consume_produce, raw_produce
from bench.batched import batched_runs
from bench.kafkatools import create_topics, delete_topics
from bench.latency import latency
from bench.run import settings_for
from bench.stages import match, runs

RECORDS, RUNS, BATCHED, LOADS = 100_000, 20_000, 200_000, (1_000, 5_000)


async def main(tag: str) -> dict[str, Any]:
    run = f"ab{uuid.uuid4().hex[:6]}"
    settings = settings_for(f"{run}.")
    raw, out = f"{run}.raw", f"{run}.out"
    await create_topics(settings, [raw, out])
    try:
        await raw_produce(settings, raw, RECORDS)
        base = await raw_consume_produce(settings, raw, out, RECORDS)
        matched = await match(settings_for(f"{run}m."), RECORDS)
        completed = await runs(settings_for(f"{run}r."), RUNS)
        carried, _ = await batched_runs(settings_for(f"{run}x."), BATCHED)
        figures: dict[str, Any] = {
            "tag": tag,
            "baseline_per_s": round(base),
            "match_per_s": round(matched),
            "match_ratio": round(matched / base, 4),
            "runs_per_s": round(completed),
            "runs_ratio": round(completed / base, 4),
            "batched_per_s": round(carried),
            "batched_ratio": round(carried / base, 3),
        }
        for rate in LOADS:
            load = await latency(settings_for(f"{run}l{rate}."), rate, 8.0, 15.0)
            figures[f"p50_ms_at_{rate}"] = round(load["completion_p50_ms"] or 0)
            figures[f"completed_per_s_at_{rate}"] = round(load["completed_per_s"] or 0)
        return figures
    finally:
        await delete_topics(settings, run)


if __name__ == "__main__":
    print(orjson.dumps(asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "work"))).decode())
