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
import fcntl
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import ClassVar, NoReturn

if __package__ in (None, ""):  # run as a script: import `tests.servers`, not siblings
    sys.path[0] = str(Path(__file__).resolve().parents[2])

from tests.servers import kafka, moto, pubsub

HOST = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parents[2]
POLL_INTERVAL = 0.25
_DETACH = 'log=$1; shift; "$@" >>"$log" 2>&1 </dev/null & echo $!'
DESCRIPTION = "Start, stop or show headwater's local Kafka, moto, Pub/Sub and Service Bus servers."
SERVICEBUS_MODULE = "tests.servers.servicebus.server"


class ServerError(RuntimeError):
    """A server could not be prepared, started or reached."""


def state_dir() -> Path:
    """The directory holding every server's files (created, and git-ignored, on demand)."""
    root = Path(os.environ.get("HEADWATER_STATE_DIR") or REPO_ROOT / ".hw")
    root.mkdir(parents=True, exist_ok=True)
    ignore = root / ".gitignore"
    if not ignore.exists():
        ignore.write_text("*\n")
    return root


def _env_port(variable: str, default: int) -> int:
    value = os.environ.get(variable)
    return int(value) if value else default


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _port_open(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def _process_is(pid: int, marker: str) -> bool:
    """True if ``pid`` is alive, not a zombie, and its command line contains ``marker``."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    proc = Path(f"/proc/{pid}")
    if not Path("/proc/self").exists():
        return True  # no procfs: trust the signal probe
    try:
        stat = (proc / "stat").read_text()
        cmdline = (proc / "cmdline").read_bytes()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X") and marker.encode() in cmdline


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Serialise start-up between processes (e.g. parallel pytest workers)."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class BackgroundServer:
    """A server run as a detached process (own session), tracked by a PID file in its dir."""

    name: ClassVar[str]
    marker: ClassVar[str]  # must appear in the server's command line
    ready_timeout: ClassVar[float]

    def __init__(self, port: int, state: Path | None = None) -> None:
        self.port = port
        self.dir = (state or state_dir()) / self.name
        self.pid_file = self.dir / f"{self.name}.pid"

    @property
    def address(self) -> str:
        raise NotImplementedError

    @property
    def log_file(self) -> Path:
        return self.dir / f"{self.name}.log"

    def is_ready(self) -> bool:
        """One protocol-level probe: does the server answer a real request right now?"""
        raise NotImplementedError

    def _prepare(self) -> None:
        """Make everything the command needs (jars, config, storage)."""

    def _command(self) -> list[str]:
        raise NotImplementedError

    @property
    def _cwd(self) -> Path:
        return self.dir

    def _alive(self, pid: int) -> bool:
        return _process_is(pid, self.marker)

    def pid(self) -> int | None:
        """The live PID from the PID file; a stale PID file is removed."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            self.pid_file.unlink(missing_ok=True)
            return None
        if self._alive(pid):
            return pid
        self.pid_file.unlink(missing_ok=True)
        return None

    def is_running(self) -> bool:
        """Our process is alive (per the PID file) and its port accepts connections."""
        return self.pid() is not None and _port_open(self.port)

    def status(self) -> str:
        """``up``, ``starting`` (ours, not answering yet), ``external`` (answering, not ours),
        ``blocked`` (port held by some other program) or ``down``."""
        if not _port_open(self.port):
            return "down" if self.pid() is None else "starting"
        if self.is_ready():
            return "up" if self.pid() is not None else "external"
        return "starting" if self.pid() is not None else "blocked"

    def describe(self, state: str | None = None) -> str:
        state, pid = state or self.status(), self.pid()
        suffix = f" (pid {pid}, log {self.log_file})" if pid else ""
        return f"{self.name}: {state} at {self.address}{suffix}"

    def start(self, timeout: float | None = None) -> None:
        """Start unless already running, then block until ready (idempotent)."""
        self.launch()
        self.wait_ready(timeout)

    def launch(self) -> bool:
        """Spawn the server if it is not running; True if a new process was spawned."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with _file_lock(self.dir / ".lock"):
            pid = self.pid()
            if pid is not None:
                _say(f"{self.name}: already running (pid {pid})")
                return False
            if _port_open(self.port):
                if self.is_ready():
                    _say(f"{self.name}: external server at {self.address}, not started here")
                    return False
                raise ServerError(f"{self.name}: port {self.port} is used by another program")
            self._prepare()
            self._spawn()
            return True

    def _spawn(self) -> None:
        command = self._command()
        _say(f"{self.name}: starting on {self.address} (log {self.log_file})…")
        with self.log_file.open("a") as log:
            log.write(f"\n=== {self.name} start {time.strftime('%F %T')} ===\n")
        # sh backgrounds the server and exits at once, so the server is nobody's child here:
        # no zombie to reap and no Popen left behind to warn at garbage collection.
        done = subprocess.run(
            ["/bin/sh", "-c", _DETACH, "sh", str(self.log_file), *command],
            cwd=self._cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            start_new_session=True, check=True,
        )  # fmt: skip
        self.pid_file.write_text(done.stdout.strip() + "\n")

    def wait_ready(self, timeout: float | None = None) -> None:
        """Poll ``is_ready`` until it answers; fail early if our process dies."""
        deadline = time.monotonic() + (timeout or self.ready_timeout)
        had_process = self.pid() is not None
        while time.monotonic() < deadline:
            if _port_open(self.port) and self.is_ready():
                return
            if had_process and self.pid() is None:
                self._fail("exited during start-up")
            time.sleep(POLL_INTERVAL)
        self._fail(f"not ready after {timeout or self.ready_timeout:.0f} s")

    def _fail(self, reason: str) -> NoReturn:
        raise ServerError(
            f"{self.name}: {reason}; last lines of {self.log_file}:\n{_tail(self.log_file)}"
        )

    def stop(self, timeout: float = 20.0) -> bool:
        """SIGTERM our process, SIGKILL after ``timeout`` s; True if one was running."""
        pid = self.pid()
        if pid is None:
            return False
        self._signal(pid, signal.SIGTERM)
        if not self._wait_exit(pid, timeout):
            _say(f"{self.name}: pid {pid} ignored SIGTERM for {timeout:.0f} s, killing")
            self._signal(pid, signal.SIGKILL)
            self._wait_exit(pid, 10.0)
        self.pid_file.unlink(missing_ok=True)
        return True

    def kill(self) -> bool:
        """SIGKILL our process at once (crash simulation); True if one was running."""
        pid = self.pid()
        if pid is None:
            return False
        self._signal(pid, signal.SIGKILL)
        self._wait_exit(pid, 10.0)
        self.pid_file.unlink(missing_ok=True)
        return True

    @staticmethod
    def _signal(pid: int, signum: signal.Signals) -> None:
        with suppress(ProcessLookupError):
            os.kill(pid, signum)

    def _wait_exit(self, pid: int, timeout: float) -> bool:
        """Wait for the process to die and its port to close (a killed JVM's leader thread
        turns zombie while other threads still hold the sockets)."""
        deadline = time.monotonic() + timeout
        while self._alive(pid) or _port_open(self.port, timeout=0.1):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)
        return True


class KafkaServer(BackgroundServer):
    """Single-node KRaft broker+controller (recipe in ``kafka.py``); data survives restarts."""

    name = "kafka"
    marker = kafka.MAIN_CLASS
    ready_timeout = 60.0

    def __init__(self, port: int | None = None, state: Path | None = None) -> None:
        super().__init__(port or _env_port("HEADWATER_KAFKA_PORT", 9092), state)
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
            kafka.resolve_jars(self.libs_dir, self.dir.parent / "m2", _say)
            self.properties_file.write_text(
                kafka.server_properties(HOST, self.port, self.controller_port, self.data_dir)
            )
            kafka.format_storage(self.libs_dir, self.properties_file, self.data_dir, _say)
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
        super().__init__(port or _env_port("HEADWATER_MOTO_PORT", 4566), state)

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
        super().__init__(port or _env_port("HEADWATER_PUBSUB_PORT", 8085), state)
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
            pubsub.build(self.bin_dir, self.dir.parent / "go", _say)
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
        super().__init__(port or _env_port("HEADWATER_SERVICEBUS_PORT", 5672), state)

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
        return _port_open(self.port)

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
        elif _port_open(server.port):
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
