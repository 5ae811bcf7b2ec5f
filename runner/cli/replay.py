"""``headwater replay``, ``headwater backfill`` (runs for a span of the past) and
``headwater trace`` (why an event did or did not start runs).

Pipelines come from ``--pipelines PATH`` (repeatable), else ``$HEADWATER_PIPELINES``
(paths separated by ``:``), else ``./pipelines``. Times are ISO 8601 (a time without an
offset is UTC), ``now``, or a duration ago such as ``-2h``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from headwater.runner import replay as replaying
from headwater.runner import trace as tracing
from headwater.runner.durations import parse_duration
from headwater.runner.errors import ConfigError, PipelineErrors
from headwater.runner.model.loader import load_pipelines
from headwater.runner.model.pipeline import Pipeline
from headwater.runner.settings import Settings


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    replay = commands.add_parser(
        "replay", help="run a pipeline again for the events of a span of the log"
    )
    replay.add_argument("paths", nargs="*", type=Path, help="pipeline files or directories")
    replay.add_argument("--pipeline", required=True, help="the pipeline to run")
    _span(replay)
    replay.add_argument(
        "--only-missing",
        action="store_true",
        help="leave out the events a run of the pipeline already succeeded for",
    )
    replay.add_argument(
        "--id",
        default=None,
        help="the replay's id (default: a new one); the same id again resumes a replay",
    )
    replay.set_defaults(command=_replay)

    backfill = commands.add_parser(
        "backfill", help="run a scheduled pipeline for the ticks of a span that never ran"
    )
    backfill.add_argument("pipeline", help="the pipeline to backfill")
    backfill.add_argument("paths", nargs="*", type=Path, help="pipeline files or directories")
    _span(backfill)
    backfill.set_defaults(command=_backfill)

    tracing = commands.add_parser(
        "trace", help="why an event did or did not start runs (by event id or source message id)"
    )
    tracing.add_argument("id", help="an event id, or the id of the source message (hwmsgid)")
    tracing.add_argument("paths", nargs="*", type=Path, help="pipeline files or directories")
    tracing.add_argument(
        "--since", type=_when, default=None, help="how far back to look (default: -24h)"
    )
    tracing.add_argument(
        "--pipelines", action="append", type=Path, default=[], help="pipeline file or folder"
    )
    tracing.set_defaults(command=_trace)


def _span(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="start", required=True, type=_when, help="span start")
    parser.add_argument("--to", dest="end", required=True, type=_when, help="span end")
    parser.add_argument(
        "--pipelines", action="append", type=Path, default=[], help="pipeline file or folder"
    )
    parser.add_argument("--dry-run", action="store_true", help="say what would run, and why")


def _when(text: str) -> float:
    """An ISO 8601 time (UTC when it has no offset), ``now`` or ``-<duration>`` ago."""
    text = text.strip()
    if text == "now":
        return time.time()
    if text.startswith("-"):
        try:
            return time.time() - parse_duration(text[1:])
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time: use ISO 8601 (2026-12-06T10:00:00Z), now, or -2h"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def _trace(args: argparse.Namespace) -> int:
    pipelines = _all(args)
    if pipelines is None:
        return 1
    since = args.since if args.since is not None else time.time() - 86_400
    found = asyncio.run(
        tracing.trace(Settings.from_env(), args.id, pipelines.values(), since, _say)
    )
    return 0 if found else 1


def _pipeline(args: argparse.Namespace) -> Pipeline | None:
    pipelines = _all(args)
    if pipelines is None:
        return None
    found = pipelines.get(args.pipeline)
    if found is None:
        known = ", ".join(sorted(pipelines)) or "none"
        raise ConfigError(f"no pipeline {args.pipeline!r} (found: {known})")
    return found


def _all(args: argparse.Namespace) -> dict[str, Pipeline] | None:
    paths = [*args.paths, *args.pipelines]
    if not paths:
        listed = os.environ.get("HEADWATER_PIPELINES", "")
        paths = [Path(p) for p in listed.split(os.pathsep) if p] or [Path("pipelines")]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise ConfigError(
            f"no pipeline files at {', '.join(missing)} (give PATH..., --pipelines or "
            "HEADWATER_PIPELINES)"
        )
    try:
        pipelines = {p.name: p for p in load_pipelines(paths)}
    except PipelineErrors as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return None
    return pipelines


def _say(line: str) -> None:
    print(line, flush=True)


def _replay(args: argparse.Namespace) -> int:
    pipeline = _pipeline(args)
    if pipeline is None:
        return 1
    replay = args.id or replaying.replay_id()
    spans = f"pipeline {pipeline.name}, events logged from"
    work = replaying.replay(
        Settings.from_env(),
        pipeline,
        args.start,
        args.end,
        only_missing=args.only_missing,
        dry_run=args.dry_run,
        replay=replay,
        say=_say,
    )
    return _carry_out(args, "replay", replay, spans, work)


def _backfill(args: argparse.Namespace) -> int:
    pipeline = _pipeline(args)
    if pipeline is None:
        return 1
    work = replaying.backfill(
        Settings.from_env(), pipeline, args.start, args.end, dry_run=args.dry_run, say=_say
    )
    return _carry_out(args, "backfill", pipeline.name, "ticks from", work)


def _carry_out(
    args: argparse.Namespace,
    command: str,
    name: str,
    spans: str,
    work: Coroutine[Any, Any, replaying.Tally],
) -> int:
    """Say what is done, do it, sum it up (a refusal: its reason, exit code 1)."""
    dry = " (dry run)" if args.dry_run else ""
    print(f"{command} {name}: {spans} {_iso(args.start)} to {_iso(args.end)}{dry}", flush=True)
    try:
        tally = asyncio.run(work)
    except replaying.ReplayError as exc:
        print(f"headwater {command}: {exc}", file=sys.stderr)
        return 1
    print(f"{command} {name}: {tally.summary(args.dry_run)}", flush=True)
    return 0


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
