"""A local server run as a detached background process, tracked by a PID file.

Job: the part every test server shares: the state dir, ports from the environment, the
PID file, starting detached (own session), the readiness poll against a deadline, and
stopping by PID only after checking the PID is the expected program. ``services.py``
holds each server's class and the ``up|down|status`` CLI. The invariants are listed in
``services.py``'s docstring.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import ClassVar, NoReturn

HOST = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parents[2]
POLL_INTERVAL = 0.25
_DETACH = 'log=$1; shift; "$@" >>"$log" 2>&1 </dev/null & echo $!'


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


def env_port(variable: str, default: int) -> int:
    value = os.environ.get(variable)
    return int(value) if value else default


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def port_open(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def process_is(pid: int, marker: str) -> bool:
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


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
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
        return process_is(pid, self.marker)

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
        return self.pid() is not None and port_open(self.port)

    def status(self) -> str:
        """``up``, ``starting`` (ours, not answering yet), ``external`` (answering, not ours),
        ``blocked`` (port held by some other program) or ``down``."""
        if not port_open(self.port):
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
        with file_lock(self.dir / ".lock"):
            pid = self.pid()
            if pid is not None:
                say(f"{self.name}: already running (pid {pid})")
                return False
            if port_open(self.port):
                if self.is_ready():
                    say(f"{self.name}: external server at {self.address}, not started here")
                    return False
                raise ServerError(f"{self.name}: port {self.port} is used by another program")
            self._prepare()
            self._spawn()
            return True

    def _spawn(self) -> None:
        command = self._command()
        say(f"{self.name}: starting on {self.address} (log {self.log_file})…")
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
            if port_open(self.port) and self.is_ready():
                return
            if had_process and self.pid() is None:
                self._fail("exited during start-up")
            time.sleep(POLL_INTERVAL)
        self._fail(f"not ready after {timeout or self.ready_timeout:.0f} s")

    def _fail(self, reason: str) -> NoReturn:
        raise ServerError(
            f"{self.name}: {reason}; last lines of {self.log_file}:\n{tail(self.log_file)}"
        )

    def stop(self, timeout: float = 20.0) -> bool:
        """SIGTERM our process, SIGKILL after ``timeout`` s; True if one was running."""
        pid = self.pid()
        if pid is None:
            return False
        self._signal(pid, signal.SIGTERM)
        if not self._wait_exit(pid, timeout):
            say(f"{self.name}: pid {pid} ignored SIGTERM for {timeout:.0f} s, killing")
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
        while self._alive(pid) or port_open(self.port, timeout=0.1):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)
        return True
