"""``make bench``: headwater's stages against raw aiokafka, measured in the same run.

Every rate is measured here, on this machine, next to a baseline measured in the same
run a moment before, so the ratio means something on a shared, noisy machine:

- baselines (``bench.baselines``), after an untimed warm-up of the broker: raw produce, and
  a raw batched consume->produce loop;
- faust (``bench.faust_forward``): the consume->produce step as a faust-streaming agent;
- ingest, match, runs (``bench.stages``): the bridge pump, the event router over 100
  pipelines, and one-task no-op pipelines end to end;
- latency (``bench.latency``) at fixed offered loads: to task start and to the completion
  event being visible, p50/p99/max;
- latency on runner processes of their own (``bench.latency``): the same at 10k events/s
  offered, on one and on two runner processes (4 partitions), measured the same way;
- flood (``bench.flood``): a million events offered at once through a bridge process to
  a runner process: peak RSS of each, the largest backlogs, events lost (must be 0) and
  the time to drain;
- memory (``bench.memory``): peak RSS of a runner process working through a backlog;
- markers and restore (``bench.markers``): peak RSS of a runner whose table holds 1M and
  10M finished runs, and the time to take its partitions over from local state, from the
  changelog alone, and on a failover with and without a standby;
- scale-out (``bench.scaleout``): match, runs and batched runs on two runner processes
  against one, measured the same way in the same run.

The table is printed and written to ``bench/results/latest.json``, every figure in full.
``--smoke`` runs tiny volumes (seconds) so the benchmark cannot rot; it checks that each
row produced a number, never a speed. Rows the issue asks for that are not built yet are
listed as such and do not fail it. Only progress lines go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import functools
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka.errors import KafkaError

from bench.baselines import raw_consume_produce, raw_produce, warm_up
from bench.batched import WINDOW, batched_runs
from bench.faust_forward import forward_with_faust
from bench.flood import flood
from bench.kafkatools import create_topics, delete_topics
from bench.latency import latency
from bench.logs import capture, log
from bench.markers import markers
from bench.memory import memory
from bench.scaleout import scale_out
from bench.stages import ingest, match, runs
from headwater.runner.settings import Settings, Topics

RESULTS = Path(__file__).parent / "results"
NOT_BUILT = "not built yet"


@dataclass(frozen=True)
class Volumes:
    records: int  # baselines, faust, ingest, match
    warm_up: int
    runs: int
    loads: tuple[int, ...]  # latency: offered events/s
    load_seconds: float
    drain_seconds: float
    backlog: int  # memory
    backlog_within: float
    scale_events: int  # scale-out: match
    scale_runs: int  # scale-out: runs
    markers: tuple[int, ...]  # markers and restore: the table sizes
    markers_within: float
    flood: int  # flood: events offered at once through a bridge
    flood_within: float
    multi_rate: int  # latency on 1 and 2 runner processes of their own: offered events/s
    #: the scale-out rows run (the smoke run checks one: each starts four processes)
    scale_stages: tuple[str, ...] = ("match", "runs", "batched")


FULL = Volumes(
    200_000,
    100_000,
    20_000,
    (1_000, 5_000, 10_000),
    8.0,
    15.0,
    1_000_000,
    300.0,
    500_000,
    60_000,
    (1_000_000, 10_000_000),
    1_200.0,
    1_000_000,
    1_800.0,
    10_000,
)
SMOKE = Volumes(
    2_000,
    2_000,
    200,
    (200,),
    1.5,
    10.0,
    20_000,
    60.0,
    20_000,
    1_000,
    (2_000, 10_000),
    120.0,
    5_000,
    120.0,
    200,
    ("runs",),
)


@dataclass
class Row:
    name: str
    value: float | None  # the headline figure: a rate, a latency or a size
    unit: str
    baseline: str | None = None
    ratio: float | None = None
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)  # every figure behind the row

    @property
    def built(self) -> bool:
        return not self.note.startswith(NOT_BUILT)

    @property
    def measured(self) -> bool:
        """Whether the row has its figures (a saturated latency row has no median)."""
        return bool(self.value and self.value > 0) or bool(self.details)


def progress(text: str) -> None:
    print(f"  ... {text}", file=sys.stderr, flush=True)


def settings_for(prefix: str) -> Settings:
    """The benchmark's settings for topics under ``prefix``; local state in a folder of
    this run's, removed at exit."""
    base = Settings.from_env()
    return Settings(kafka=base.kafka, topics=Topics(prefix=prefix), state_root=_state_root())


@functools.cache
def _state_root() -> Path:
    root = Path(tempfile.mkdtemp(prefix="hw-bench-state-"))
    atexit.register(shutil.rmtree, root, True)
    return root


# --- the rows -----------------------------------------------------------------------------


async def benchmark(volumes: Volumes) -> list[Row]:
    run = f"bench{uuid.uuid4().hex[:8]}"
    settings = settings_for(f"{run}.")
    try:
        return await _rows(run, settings, volumes)
    finally:
        try:
            await delete_topics(settings, run)
        except (KafkaError, OSError) as exc:  # never hide why the run itself failed
            log.warning("could not delete the topics of %s: %r", run, exc)


async def _rows(run: str, settings: Settings, v: Volumes) -> list[Row]:
    n = v.records
    warm, raw, raw_out, faust_out = (f"{run}.{name}" for name in ("warm", "raw", "out", "faust"))
    await create_topics(settings, [warm, f"{warm}-out", raw, raw_out, faust_out])

    progress(f"warm-up: raw produce and consume -> produce, {v.warm_up} records (untimed)")
    await warm_up(settings, warm, f"{warm}-out", v.warm_up)
    progress(f"baseline: raw aiokafka produce, {n} records")
    produce = await raw_produce(settings, raw, n)
    progress(f"baseline: raw batched consume -> produce, {n} records")
    consume_produce = await raw_consume_produce(settings, raw, raw_out, n)
    progress(f"faust: the same consume -> produce as a faust-streaming agent, {n} records")
    faust = Row("faust-streaming agent consume->produce", None, "msgs/s")
    try:
        faust.value = await forward_with_faust(settings, raw, faust_out, n, 120 + n / 1000)
        faust.baseline, faust.ratio = "baseline consume->produce", faust.value / consume_produce
    except RuntimeError as exc:  # an optional dependency: say why, and measure the rest
        faust.note = f"failed: {exc}"
    progress(f"ingest: bridge pump from an in-memory source, {n} events")
    ingested = await ingest(settings_for(f"{run}i."), n)
    progress(f"match: router over 100 pipelines, {n} events")
    matched = await match(settings_for(f"{run}m."), n)
    progress(f"runs: one-task pipelines end to end, {v.runs} runs")
    completed = await runs(settings_for(f"{run}r."), v.runs)
    progress(f"batched runs: {n} events through a trigger batching {WINDOW.max_events} a run")
    carried, batch_runs = await batched_runs(settings_for(f"{run}x."), n)

    rows = [
        Row("baseline produce (raw aiokafka send)", produce, "msgs/s"),
        Row("baseline consume->produce (raw getmany loop)", consume_produce, "msgs/s"),
        faust,
        Row(
            "ingest (pump: memory source -> CloudEvent -> Kafka -> ack)",
            ingested,
            "events/s",
            "baseline produce",
            ingested / produce,
        ),
        Row(
            "match (router, 100 pipelines)",
            matched,
            "events/s",
            "baseline consume->produce",
            matched / consume_produce,
        ),
        Row("runs (one no-op task, end to end)", completed, "runs/s"),
        Row(
            f"batched runs (max_events {WINDOW.max_events}, max_wait {WINDOW.max_wait:g}s)",
            carried,
            "events/s",
            note=f"{batch_runs} runs",
        ),
    ]
    for rate in v.loads:
        progress(f"latency: {rate} events/s offered for {v.load_seconds:g}s, one-task pipeline")
        load = settings_for(f"{run}l{rate}.")
        rows.append(_latency_row(await latency(load, rate, v.load_seconds, v.drain_seconds)))
    for processes in (1, 2):
        progress(
            f"latency: {v.multi_rate} events/s offered for {v.load_seconds:g}s, "
            f"{processes} runner process(es) of their own"
        )
        load = settings_for(f"{run}L{processes}.")
        measured = await latency(load, v.multi_rate, v.load_seconds, v.drain_seconds, processes)
        rows.append(_latency_row(measured))
    progress(f"flood: {v.flood:,} events offered at once through a bridge process")
    rows.append(_flood_row(await flood(settings_for(f"{run}f."), v.flood, v.flood_within)))
    progress(f"memory: a runner process working through a backlog of {v.backlog} events")
    used = await memory(settings_for(f"{run}b."), v.backlog, v.backlog_within)
    rows.append(
        Row(
            f"memory (runner peak RSS, {v.backlog:,}-event backlog)",
            used["peak_rss_mb"],
            "MB",
            note=f"backlog routed in {used['backlog_seconds']:.0f} s "
            f"({used['events_per_s']:,.0f} events/s)",
            details=used,
        )
    )
    progress(f"markers and restore: run tables of {', '.join(f'{n:,}' for n in v.markers)}")
    rows.extend(marker_rows(await markers(settings_for(f"{run}k."), v.markers, v.markers_within)))
    for stage, count, unit in (
        ("match", v.scale_events, "events/s"),
        ("runs", v.scale_runs, "runs/s"),
        ("batched", v.scale_events, "events/s"),
    ):
        if stage not in v.scale_stages:
            continue
        figures = []
        for processes in (1, 2):
            progress(f"scale-out: {stage} on {processes} runner process(es), {count} events")
            scale = settings_for(f"{run}s{stage}{processes}.")
            figures.append(await scale_out(scale, stage, processes, count, v.backlog_within))
        one, two = (f["per_s"] for f in figures)
        rows.append(
            Row(
                f"{stage}, 2 runner processes (scale-out)",
                two,
                unit,
                "baseline 1-process",
                two / one if one and two else None,
                note=f"1 process: {_per_s(one)}, measured the same way (steady, 4 partitions); "
                + ", ".join(
                    f"{f['processes']} process(es) used {f['runner_cores']:.2f} cores, "
                    f"machine {f['machine_busy']:.0%} busy"
                    for f in figures
                    if "runner_cores" in f
                )
                + ("" if two else "; no steady part: the backlog was done first"),
                details={"one_process": figures[0], "two_processes": figures[1]},
            )
        )
    return rows


def marker_rows(f: dict[str, Any]) -> list[Row]:
    """The markers row (peak RSS at the largest table, against the smallest) and the
    restore row (from local state, against a rebuild from the changelog alone)."""
    small, large = (f["rebuild"][str(n)] for n in (f["counts"][0], f["counts"][-1]))
    n_small, n_large = f["counts"][0], f["counts"][-1]
    local, failover = f["local"], f["failover"]
    per_million = large["restore_seconds"] / (n_large / 1e6)
    return [
        Row(
            f"markers (runner peak RSS, {n_large:,} finished runs)",
            large["peak_rss_mb"],
            "MB",
            f"baseline {n_small:,}-marker table",
            large["peak_rss_mb"] / small["peak_rss_mb"],
            note=f"{n_small:,} markers: {small['peak_rss_mb']:.0f} MB; store "
            f"{large['store_bytes_per_marker']:.0f} B/marker on disk, changelog "
            f"{f['changelog_bytes_per_marker']:.0f} B/marker",
            details=f,
        ),
        Row(
            f"restore ({n_large:,} markers, from local state)",
            local["restore_seconds"],
            "s",
            "baseline changelog-alone",
            # restore times come from log lines in milliseconds: a smoke-sized rebuild can be 0
            local["restore_seconds"] / max(large["restore_seconds"], 0.001),
            note=f"from the changelog alone {large['restore_seconds']:.1f} s "
            f"({per_million:.1f} s per 1M markers); failover of a killed owner's partitions "
            f"(kill -> restored, incl. the session timeout; restore alone) without a standby "
            f"{_failover(failover['no_standby'])}, with one {_failover(failover['standby'])}",
            details={"local": local, "rebuild": large, "failover": failover},
        ),
    ]


def _failover(f: dict[str, Any]) -> str:
    return f"{f['kill_to_restored_seconds']:.1f} s ({f['restore_seconds']:.1f} s)"


def _flood_row(f: dict[str, Any]) -> Row:
    """The headline is the time to drain; lost and duplicated events must be 0."""
    rss, peak = f["peak_rss_mb"], f["max_backlog"]
    return Row(
        f"flood ({f['events']:,} events offered at once: bridge process -> runner process)",
        f["drain_seconds"],
        "s",
        note=f"lost {f['lost']}, completed twice {f['duplicates']}; "
        f"{f['runs_per_s']:,.0f} runs/s; peak RSS bridge {rss['bridge']:.0f} MB, runner "
        f"{rss['runner']:.0f} MB; max backlog: events not routed {peak['events_not_routed']:,},"
        f" runs pending {peak['runs_pending']:,}, task requests {peak['tasks_not_done']:,}",
        details=f,
    )


def _latency_row(figures: dict[str, Any]) -> Row:
    """The headline is the median to completion; missing if most runs were not done."""
    f = figures
    start = "/".join(_ms(f[f"start_{k}_ms"]) for k in ("p50", "p99", "max"))
    done = "/".join(_ms(f[f"completion_{k}_ms"]) for k in ("p50", "p99", "max"))
    note = (
        f"p50/p99/max ms: to completion {done}, to task start {start}; offered"
        f" {f['offered_per_s']:,.0f}/s, achieved {_per_s(f['achieved_per_s'])},"
        f" completed {_per_s(f['completed_per_s'])}"
    )
    if f["completed"] < f["events"]:
        note += f"; {f['events'] - f['completed']:,} of {f['events']:,} runs not done in time"
    n = f["processes"]
    where = f", {n} runner process{'es' if n > 1 else ''} of their own" if f["own"] else ""
    return Row(
        f"latency at {f['offered_per_s']:,.0f} events/s{where} (to completion, p50)",
        f["completion_p50_ms"],
        "ms",
        note=note,
        details=figures,
    )


# --- the table ----------------------------------------------------------------------------


def figure(row: Row) -> str:
    if row.value is None:
        return "-"
    if row.unit == "s":
        return f"{row.value:,.2f} s"
    return f"{row.value:,.0f} {row.unit}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _per_s(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}/s"


def print_table(rows: list[Row]) -> None:
    cells = [
        (
            row.name,
            figure(row),
            f"{row.ratio:.2f} x {row.baseline.split(' ')[1]}" if row.ratio and row.baseline else "",
            row.note,
        )
        for row in rows
    ]
    header = ("row", "figure", "ratio", "note")
    widths = [max(len(line[i]) for line in [header, *cells]) for i in range(3)]
    print()
    for name, value, ratio, note in [header, *cells]:
        print(f"{name:{widths[0]}}  {value:>{widths[1]}}  {ratio:>{widths[2]}}  {note}".rstrip())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--smoke", action="store_true", help="tiny volumes; no speed claims")
    args = parser.parse_args()
    name = "smoke" if args.smoke else "latest"
    RESULTS.mkdir(exist_ok=True)
    warnings = capture(RESULTS / f"{name}.log")
    started = time.monotonic()
    rows = asyncio.run(benchmark(SMOKE if args.smoke else FULL))
    took = time.monotonic() - started
    print_table(rows)
    print(f"\n{took:.0f} s in all; {warnings.count} warning(s) logged to bench/results/{name}.log")
    out = RESULTS / f"{name}.json"
    out.write_bytes(
        orjson.dumps(
            {
                "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "smoke": args.smoke,
                "seconds": took,
                "warnings": warnings.count,
                "rows": [asdict(row) for row in rows],
            },
            option=orjson.OPT_INDENT_2,
        )
    )
    missing = [row.name for row in rows if row.built and not row.measured]
    if missing:
        print(f"rows without a figure: {missing}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
