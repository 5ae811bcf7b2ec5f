"""Start and stop real headwater processes for tests (by PID, never by name)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from headwater.runner.settings import Settings

HEADWATER = str(Path(sys.executable).with_name("headwater"))


def cli(settings: Settings, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run one ``headwater`` command against the test's Kafka and topics; its result."""
    env = {
        **os.environ,
        "HEADWATER_KAFKA": settings.kafka.bootstrap,
        "HEADWATER_TOPIC_PREFIX": settings.topics.prefix,
    }
    return subprocess.run(
        [HEADWATER, *args], capture_output=True, text=True, env=env, timeout=timeout
    )


class HeadwaterProcess:
    """``headwater dev ...`` as a child process, its output in a log file."""

    def __init__(
        self, args: list[str], settings: Settings, log: Path, env: dict[str, str] | None = None
    ) -> None:
        self.args = args
        self.log = log
        self.env = {
            **os.environ,
            **(env or {}),
            "HEADWATER_KAFKA": settings.kafka.bootstrap,
            "HEADWATER_TOPIC_PREFIX": settings.topics.prefix,
            "PYTHONUNBUFFERED": "1",
        }
        # Local state beside the log, unless the test gives its own (never in $HOME).
        self.env.setdefault("HEADWATER_STATE_DIR", str(log.parent / "state"))
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> HeadwaterProcess:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [HEADWATER, *self.args], stdout=out, stderr=subprocess.STDOUT, env=self.env
            )
        return self

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_for_output(self, text: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output():
            assert self.process is not None and self.process.poll() is None, (
                f"headwater exited early:\n{self.output()}"
            )
            assert time.monotonic() < deadline, f"no {text!r} in output:\n{self.output()}"
            time.sleep(0.1)

    async def output_shows(self, text: str, within: float = 60.0) -> None:
        """``wait_for_output`` for async tests: polls without blocking the event loop."""
        deadline = time.monotonic() + within
        while text not in self.output():
            assert self.process is not None and self.process.poll() is None, (
                f"headwater exited early:\n{self.output()}"
            )
            assert time.monotonic() < deadline, f"no {text!r} in output:\n{self.output()}"
            await asyncio.sleep(0.1)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()
