"""Keep a component running: restart it with exponential backoff when it fails.

A component is a coroutine function taking the process's ``stopping`` event. It is
restarted from scratch after any error (it rebuilds its state from Kafka), so a lost
broker or a broken connection costs a delay, never the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

Component = Callable[[asyncio.Event], Awaitable[None]]
_HEALTHY_AFTER = 60.0


async def supervise(
    name: str,
    component: Component,
    stopping: asyncio.Event,
    initial: float = 0.5,
    maximum: float = 10.0,
) -> None:
    delay = initial
    while not stopping.is_set():
        started = time.monotonic()
        try:
            await component(stopping)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure means: restart with backoff
            if time.monotonic() - started > _HEALTHY_AFTER:
                delay = initial
            wait = delay * (0.8 + 0.4 * random.random())
            log.warning(
                "%s failed (%s: %s); restarting in %.1fs", name, type(exc).__name__, exc, wait
            )
            delay = min(maximum, delay * 2)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), wait)
