"""The benchmark's own child processes: stopping one by its PID, and keeping what it
printed in the run's log instead of on stderr."""

from __future__ import annotations

import asyncio
import contextlib
import signal

from bench.logs import log


async def stop(process: asyncio.subprocess.Process, within: float) -> None:
    """SIGTERM (a clean stop), then SIGKILL if it has not exited ``within`` seconds."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), within)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
    await process.wait()


def relay(process: str, output: bytes, limit: int = 100_000) -> None:
    """Log what one of the benchmark's processes printed (its last ``limit`` bytes)."""
    text = output[-limit:].decode(errors="replace").strip()
    if text:
        log.warning("%s printed:\n%s", process, text)
