"""Headwater's local test servers: a single-node KRaft Kafka broker, a moto (S3/SQS) server,
a Pub/Sub fake (Google's pstest) and an AMQP Service Bus stand-in.

Job: resolve, start, probe, stop and report the servers the integration tests talk to,
without Docker, as plain background processes.  Used as a library by pytest fixtures
(``KafkaServer``, ``MotoServer``, ``PubSubServer``, ``ServiceBusServer``) and as a CLI::

    python tests/servers/services.py up|down|status [--only kafka|moto|pubsub|servicebus]

This module owns the processes and the CLI; ``kafka.py``, ``moto.py`` and ``pubsub/`` hold
each server's recipe (files to prepare, command line, readiness probe); the Service Bus
server is the Python module ``tests.servers.servicebus.server``.

Invariants:
- Everything lives under the state dir: ``<repo>/.hw`` or ``$HEADWATER_STATE_DIR``
  (``m2/`` Maven cache, ``go/`` Go modules and build cache, ``bin/pstest``,
  ``kafka/{libs,data,server.log,kafka.pid}``, ``<name>/{<name>.log,<name>.pid}`` for the rest).
- Only loopback (127.0.0.1).  Ports: ``$HEADWATER_KAFKA_PORT`` (9092, controller = port + 1),
  ``$HEADWATER_MOTO_PORT`` (4566), ``$HEADWATER_PUBSUB_PORT`` (8085) and
  ``$HEADWATER_SERVICEBUS_PORT`` (5672).
- A process is signalled only through the PID in its PID file, and only after checking that
  PID is alive and is the expected program; never by name.  Stale PID files are removed.
- Servers run in their own session, so a Ctrl-C in the terminal does not reach them.
- "Ready" means a real protocol request succeeded (Kafka metadata, moto HTTP, Pub/Sub
  ListTopics; Service Bus: its AMQP port accepts), polled against a deadline; never a
  fixed sleep.
- ``start()`` is idempotent: a running, answering server returns at once.  A server on the
  port that these scripts did not start is reported as "external" and never signalled.
- Kafka data survives stop/start and kill/start; moto, Pub/Sub and Service Bus keep their
  state only in memory (a restart starts empty).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import `tests.servers`, not siblings
    sys.path[0] = str(Path(__file__).resolve().parents[2])

from tests.servers import kafka, moto, pubsub
from tests.servers.background import (
    HOST,
    REPO_ROOT,
    BackgroundServer,
    ServerError,
    env_port,
    port_open,
    say,
)

DESCRIPTION = "Start, stop or show headwater's local Kafka, moto, Pub/Sub and Service Bus servers."
SERVICEBUS_MODULE = "tests.servers.servicebus.server"


class KafkaServer(BackgroundServer):
    """Single-node KRaft broker+controller (recipe in ``kafka.py``); data survives restarts."""

    name = "kafka"
    marker = kafka.MAIN_CLASS
    ready_timeout = 60.0

    def __init__(self, port: int | None = None, state: Path | None = None) -> None:
        super().__init__(port or env_port("HEADWATER_KAFKA_PORT", 9092), state)
        self.controller_port = self.port + 1
        self.libs_dir = self.dir / "libs"
        self.data_dir = self.dir / "data"
        self.properties_file = self.dir / "server.properties"

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def address(self) -> str:
        return self.bootstrap

    @property
    def log_file(self) -> Path:
        return self.dir / "server.log"

    def is_ready(self) -> bool:
        """A metadata request through aiokafka's admin client succeeds."""
        return kafka.answers(self.bootstrap)

    def _prepare(self) -> None:
        try:
            kafka.resolve_jars(self.libs_dir, self.dir.parent / "m2", say)
            self.properties_file.write_text(
                kafka.server_properties(HOST, self.port, self.controller_port, self.data_dir)
            )
            kafka.format_storage(self.libs_dir, self.properties_file, self.data_dir, say)
        except kafka.RecipeError as error:
            raise ServerError(str(error)) from error

    def _command(self) -> list[str]:
        return kafka.broker_command(self.libs_dir, self.properties_file)


class MotoServer(BackgroundServer):
    """moto's HTTP server (recipe in ``moto.py``); its state lives only in memory."""

    name = "moto"
    marker = moto.MARKER
    ready_timeout = 30.0

    def __init__(self, port: int | None = None, state: Path | None = None) -> None:
        super().__init__(port or env_port("HEADWATER_MOTO_PORT", 4566), state)

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def address(self) -> str:
        return self.endpoint_url

    def is_ready(self) -> bool:
        """moto's own API answers an HTTP GET."""
        return moto.answers(self.endpoint_url)

    def _command(self) -> list[str]:
        return moto.server_command(HOST, self.port)


class PubSubServer(BackgroundServer):
    """Google's pstest Pub/Sub fake, built from Go (recipe in ``pubsub/``); memory only."""

    name = "pubsub"
    marker = pubsub.BINARY_NAME
    ready_timeout = 30.0

    def __init__(self, port: int | None = None, state: Path | None = None) -> None:
        super().__init__(port or env_port("HEADWATER_PUBSUB_PORT", 8085), state)
        self.bin_dir = self.dir.parent / "bin"
        self.binary = self.bin_dir / pubsub.BINARY_NAME

    @property
    def emulator_host(self) -> str:
        """The value for ``PUBSUB_EMULATOR_HOST``."""
        return f"{HOST}:{self.port}"

    @property
    def address(self) -> str:
        return self.emulator_host

    def is_ready(self) -> bool:
        """A ListTopics request over gRPC succeeds."""
        return pubsub.answers(self.emulator_host)

    def _prepare(self) -> None:
        try:
            pubsub.build(self.bin_dir, self.dir.parent / "go", say)
        except pubsub.RecipeError as error:
            raise ServerError(str(error)) from error

    def _command(self) -> list[str]:
        return pubsub.server_command(self.binary, HOST, self.port)


class ServiceBusServer(BackgroundServer):
    """The AMQP Service Bus stand-in ``tests.servers.servicebus.server``; memory only."""

    name = "servicebus"
    marker = SERVICEBUS_MODULE
    ready_timeout = 30.0
    lock_duration = 5  # seconds: lock expiry (redelivery) tests stay short

    def __init__(self, port: int | None = None, state: Path | None = None) -> None:
        super().__init__(port or env_port("HEADWATER_SERVICEBUS_PORT", 5672), state)

    @property
    def connection_string(self) -> str:
        """For ``azure-servicebus``: plain AMQP (no TLS) to this server."""
        return (
            f"Endpoint=sb://{HOST}:{self.port};SharedAccessKeyName=k;SharedAccessKey=v;"
            "UseDevelopmentEmulator=true;"
        )

    @property
    def address(self) -> str:
        return f"amqp://{HOST}:{self.port}"

    def is_ready(self) -> bool:
        """Its AMQP port accepts connections."""
        return port_open(self.port)

    @property
    def _cwd(self) -> Path:
        return REPO_ROOT  # so `-m tests.servers.servicebus.server` resolves

    def _command(self) -> list[str]:
        return [
            sys.executable, "-m", SERVICEBUS_MODULE, "--host", HOST, "--port", str(self.port),
            "--lock-duration", str(self.lock_duration),
        ]  # fmt: skip


def _servers(only: str | None) -> list[BackgroundServer]:
    servers = (KafkaServer(), MotoServer(), PubSubServer(), ServiceBusServer())
    return [server for server in servers if only in (None, server.name)]


def _up(servers: Sequence[BackgroundServer]) -> int:
    for server in servers:  # launch all first, so their start-ups overlap
        server.launch()
    for server in servers:
        server.wait_ready()
        print(server.describe())
    return 0


def _down(servers: Sequence[BackgroundServer]) -> int:
    for server in servers:
        if server.stop():
            print(f"{server.name}: stopped")
        elif port_open(server.port):
            print(f"{server.name}: {server.address} is served by a process not started here")
        else:
            print(f"{server.name}: not running")
    return 0


def _status(servers: Sequence[BackgroundServer]) -> int:
    states = [server.status() for server in servers]
    for server, state in zip(servers, states, strict=True):
        print(server.describe(state))
    return 0 if all(state in ("up", "external") for state in states) else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="services.py", description=DESCRIPTION)
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument(
        "--only", choices=["kafka", "moto", "pubsub", "servicebus"], help="act on one server only"
    )
    args = parser.parse_args(argv)
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # probes fail by design
    commands = {"up": _up, "down": _down, "status": _status}
    try:
        return commands[args.command](_servers(args.only))
    except ServerError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: started servers keep running; use `down` to stop them")
        return 130


if __name__ == "__main__":
    sys.exit(main())
