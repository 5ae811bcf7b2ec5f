"""The ``headwater`` command line: ``dev``, ``validate``, ``publish``, ``status``,
``replay``, ``backfill``.

``dev`` runs bridges, router, control processor and an in-process worker in one process
against the configured Kafka (``HEADWATER_KAFKA``, default the local one) and prints each
run's progress. Exit codes: 0 fine, 1 invalid input (pipeline files, event), 2 usage.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import re
import signal
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import orjson
from aiokafka.errors import KafkaError

from headwater.bridges import sources
from headwater.bridges.base import Source
from headwater.runner import metrics
from headwater.runner.cli import inspect, replay
from headwater.runner.engine import ROLES, serve
from headwater.runner.envelope import CloudEvent, from_kafka, new_id, now_iso, to_kafka
from headwater.runner.errors import ConfigError, PipelineErrors
from headwater.runner.executor import hung_threads
from headwater.runner.flow.routes import RouteInfo
from headwater.runner.log import kafka
from headwater.runner.log.reader import lags, read_now, topic_partitions
from headwater.runner.model.config import load_config, residency_problems
from headwater.runner.model.loader import load_pipelines, validate_paths
from headwater.runner.model.pipeline import Pipeline
from headwater.runner.observe.hooks import ConsoleProgress, JsonFormatter, Observers
from headwater.runner.observe.metrics import MetricsObserver
from headwater.runner.observe.status import Status
from headwater.runner.replay import records_between
from headwater.runner.secrets import RedactingFilter
from headwater.runner.settings import Settings

#: File names ``headwater validate`` reads as config files.
CONFIG_NAMES = ("headwater.yaml", "headwater.yml")

#: Seconds of heartbeats ``headwater status`` reads back: the workers alive now.
HEARD_WITHIN = 60.0


#: Options whose value may be a relative time such as ``-2h`` (argparse would take it for
#: an option of its own).
TIME_OPTIONS = frozenset({"--since", "--from", "--to"})


def _relative_times_joined(argv: Sequence[str]) -> list[str]:
    """``--since -2h`` as ``--since=-2h``, so that argparse reads the value."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] in TIME_OPTIONS and re.fullmatch(r"-\d+(\.\d+)?[a-z]*", arg):
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(_relative_times_joined(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for handler in logging.getLogger().handlers:  # a resolved secret never reaches a log
        handler.addFilter(RedactingFilter())
        if args.log_format == "json":
            handler.setFormatter(JsonFormatter())
    if not args.verbose:
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # our components say why
        logging.getLogger("botocore").setLevel(logging.WARNING)
    try:
        return int(args.command(args))
    except ConfigError as exc:
        print(f"headwater: {exc}", file=sys.stderr)
        return 1
    except KafkaError as exc:  # a one-shot command (runs, dlq, trace, cancel...) without Kafka
        where = os.environ.get("HEADWATER_KAFKA") or "the default 127.0.0.1:9092"
        print(f"headwater: Kafka ({where}) failed the request: {exc}", file=sys.stderr)
        return 1


def _check_state_dir(folder: Path) -> None:
    """The run table's local state must be writable: say so at once, not at each restore."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe-"):
            pass
    except OSError as exc:
        raise ConfigError(
            f"HEADWATER_STATE_DIR: cannot keep the run table's local state in {folder} "
            f"({exc.strerror or exc})"
        ) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="headwater", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=os.environ.get("HEADWATER_LOG_FORMAT", "text"),
        help="log lines as text, or one JSON object per line (default: $HEADWATER_LOG_FORMAT)",
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    dev = commands.add_parser("dev", help="run bridges + runner + worker in one process")
    dev.add_argument("pipelines", nargs="+", type=Path, help="pipeline files or directories")
    dev.add_argument("--metrics", metavar="HOST:PORT", help="serve Prometheus metrics there")
    sources.add_arguments(dev)
    dev.set_defaults(command=_dev)

    run = commands.add_parser(
        "run", help="run some or all roles of a production process from a config file"
    )
    run.add_argument(
        "action",
        nargs="*",
        help=(
            "show ID: one run's tasks, attempts, outputs and errors; cancel ID: end a "
            "running run cancelled, its running tasks told to stop (without: serve)"
        ),
    )
    run.add_argument("--reason", default="", help="cancel: why (in the completion)")
    run.add_argument(
        "--wait",
        type=float,
        default=30.0,
        help="cancel: seconds to wait for the run to end (0: do not wait; default 30)",
    )
    run.add_argument(
        "--config",
        type=Path,
        default=None,
        help="the config file (default: $HEADWATER_CONFIG, else ./headwater.yaml)",
    )
    run.add_argument(
        "--role",
        action="append",
        choices=ROLES,
        default=None,
        help="a role to run (repeatable; default: all of them)",
    )
    run.add_argument(
        "--routes",
        default=None,
        help="the routes this process's workers serve, comma-separated (default: all)",
    )
    run.add_argument("--metrics", metavar="HOST:PORT", help="serve Prometheus metrics there")
    run.set_defaults(command=_run)

    validate = commands.add_parser("validate", help="check pipeline files and config files")
    validate.add_argument("paths", nargs="*", type=Path)
    validate.add_argument(
        "--config", type=Path, default=None, help="a config file (its pipelines too)"
    )
    validate.set_defaults(command=_validate)

    publish = commands.add_parser("publish", help="send one CloudEvent to the events topic")
    publish.add_argument("--type", required=True)
    publish.add_argument("--source", default="/headwater/cli")
    publish.add_argument("--subject")
    publish.add_argument("--id", default=None, help="event id (default: a new UUID)")
    publish.add_argument("--data", default=None, help="JSON data, or @FILE to read it from a file")
    publish.set_defaults(command=_publish)

    status = commands.add_parser(
        "status", help="breakers, services, paused consumers and lags, from hw.status"
    )
    status.add_argument("--json", action="store_true", help="print JSON instead of text")
    status.set_defaults(command=_status)
    replay.add_commands(commands)
    inspect.add_commands(commands)
    return parser


def _status(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    try:
        status = asyncio.run(_read_status(settings))
    except KafkaError as exc:
        print(f"headwater status: Kafka {settings.kafka.bootstrap}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(orjson.dumps(status.to_json(), option=orjson.OPT_INDENT_2).decode())
    else:
        print(status.render(datetime.now(UTC)))
    return 0


async def _read_status(settings: Settings) -> Status:
    status = Status()
    if await topic_partitions(settings, settings.topics.status):
        events = []
        async for records in read_now(settings, settings.topics.status):
            for record in records:
                try:
                    events.append(from_kafka(record.headers, record.value).to_dict())
                except Exception:  # noqa: BLE001 - not a status event: not shown
                    continue
        status.fold(events)
    beats = []
    since = time.time() - HEARD_WITHIN
    async for record, _ in records_between(settings, settings.topics.heartbeats, since, 1e12):
        with contextlib.suppress(orjson.JSONDecodeError):
            beats.append(orjson.loads(record.value or b""))
    status.heard(beats)
    status.lags = await lags(settings)
    return status


def _validate(args: argparse.Namespace) -> int:
    configs = [args.config] if args.config else []
    paths: list[Path] = []
    for path in args.paths:  # a file named headwater.yaml is a config file
        (configs if path.name in CONFIG_NAMES else paths).append(path)
    if not configs and not paths:
        print("headwater validate: give pipeline files or folders, or --config", file=sys.stderr)
        return 2
    problems: list[str] = []
    for config in configs:
        try:
            loaded = load_config(config, sources.problems)
        except PipelineErrors as exc:
            problems += exc.problems
            continue
        paths += [p for p in loaded.pipelines if p.exists()]
    problems += validate_paths(paths) if paths else []
    for problem in problems:
        print(problem)
    if problems:
        return 1
    count = len(load_pipelines(paths)) if paths else 0
    said = f", {len(configs)} config file(s)" if configs else ""
    print(f"ok: {count} pipeline(s) valid{said}")
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.action:
        if len(args.action) == 2 and args.action[0] == "show":
            return inspect.show_run(args.action[1])
        if len(args.action) == 2 and args.action[0] == "cancel":
            return inspect.cancel_run(args.action[1], args.reason, args.wait)
        print("headwater run: give show ID, cancel ID, or no words to serve", file=sys.stderr)
        return 2
    path = args.config or Path(os.environ.get("HEADWATER_CONFIG") or "headwater.yaml")
    try:
        config = load_config(path, sources.problems)
    except PipelineErrors as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    settings = Settings.from_env({**config.env, **os.environ})
    roles = tuple(dict.fromkeys(args.role or ROLES))
    routes = None
    if args.routes is not None:
        routes = [r.strip() for r in args.routes.split(",") if r.strip()]
        if not routes:
            raise ConfigError("--routes: give at least one route name")
    if {"control"} & set(roles):
        _check_state_dir(settings.state_dir)
    missing = [str(p) for p in config.pipelines if not p.exists()]
    if missing:
        raise ConfigError(f"{config.file}: pipelines: no such file or folder: {', '.join(missing)}")
    pipelines = _load(list(config.pipelines))
    if pipelines is None:
        return 1
    declared = {
        r.name: RouteInfo(r.name, r.region, r.residency, r.fallback, r.cloud) for r in config.routes
    }
    problems = residency_problems(pipelines, declared)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return 1
    bridged = sources.from_config(config.sources) if "bridges" in roles else []
    _serve_metrics(args.metrics)
    served = ", ".join(routes) if routes is not None else "all routes"
    print(
        f"headwater run: roles {', '.join(roles)} ({served}); {len(pipelines)} pipeline(s), "
        f"{len(bridged)} source(s), Kafka {settings.kafka.bootstrap}, topics "
        f"{settings.topics.prefix}*, instance {settings.instance}",
        flush=True,
    )
    asyncio.run(
        _serve_until_signal(
            settings,
            pipelines,
            bridged,
            roles=roles,
            routes=routes,
            said="run",
            json_lines=args.log_format == "json",
            declared=declared,
            failover_after=config.failover_after,
            heartbeat=config.heartbeat_every,
        )
    )
    return 0


def _serve_metrics(address: str | None) -> None:
    """``--metrics HOST:PORT``: Prometheus metrics at ``http://HOST:PORT/metrics``."""
    if address is None:
        return
    port = address.rpartition(":")[2]
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--metrics: {address!r} is not HOST:PORT (such as 0.0.0.0:9464)")
    try:
        metrics.serve(address)
    except OSError as exc:
        raise ConfigError(f"--metrics: cannot listen on {address}: {exc.strerror or exc}") from None


def _load(paths: list[Path]) -> list[Pipeline] | None:
    """The pipelines at ``paths`` (their problems printed: ``None``); their tasks'
    modules, which live beside the pipeline files, become importable."""
    try:
        pipelines = load_pipelines(paths)
    except PipelineErrors as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return None
    for path in paths:
        folder = path if path.is_dir() else path.parent
        sys.path.insert(0, str(folder.resolve()))
    return pipelines


def _dev(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    _check_state_dir(settings.state_dir)
    pipelines = _load(args.pipelines)
    if pipelines is None:
        return 1
    _serve_metrics(args.metrics)
    bridged = sources.build(args)
    print(
        f"headwater dev: {len(pipelines)} pipeline(s), {len(bridged)} source(s), "
        f"Kafka {settings.kafka.bootstrap}, topics {settings.topics.prefix}*",
        flush=True,
    )
    json_lines = args.log_format == "json"
    asyncio.run(_serve_until_signal(settings, pipelines, bridged, json_lines=json_lines))
    hung = hung_threads()
    if hung:  # a thread cannot be stopped, and Python would wait for it at exit, forever
        print(f"headwater dev: leaving {hung} hung task thread(s) behind", flush=True)
        sys.stderr.flush()
        os._exit(0)
    return 0


async def _serve_until_signal(
    settings: Settings,
    pipelines: list[Pipeline],
    sources: list[Source],
    *,
    roles: Sequence[str] = ROLES,
    routes: Sequence[str] | None = None,
    said: str = "dev",
    json_lines: bool = False,
    declared: Mapping[str, RouteInfo] | None = None,
    failover_after: float = 10.0,
    heartbeat: float = 2.0,
) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    await serve(
        settings,
        pipelines,
        sources,
        Observers([ConsoleProgress(json=json_lines), MetricsObserver(settings.egress_prices)]),
        stopping,
        roles=roles,
        routes=routes,
        declared=declared,
        failover_after=failover_after,
        heartbeat=heartbeat,
    )
    print(f"headwater {said}: stopped", flush=True)


def _publish(args: argparse.Namespace) -> int:
    data = None
    if args.data is not None:
        raw = Path(args.data[1:]).read_bytes() if args.data.startswith("@") else args.data
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            print(f"headwater publish: --data is not valid JSON: {exc}", file=sys.stderr)
            return 1
    event = CloudEvent(
        id=args.id or new_id(),
        source=args.source,
        type=args.type,
        subject=args.subject,
        time=now_iso(),
        data=data,
    )
    asyncio.run(_send(Settings.from_env(), event))
    print(event.id)
    return 0


async def _send(settings: Settings, event: CloudEvent) -> None:
    await kafka.ensure_topics(settings, {"default"})
    producer = kafka.producer(settings)
    await producer.start()
    try:
        headers, value = to_kafka(event)
        key = event.subject.encode() if event.subject else None
        await producer.send_and_wait(settings.topics.events, value, key=key, headers=headers)
    finally:
        await producer.stop()


if __name__ == "__main__":
    sys.exit(main())
