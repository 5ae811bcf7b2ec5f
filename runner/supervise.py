"""Keep a component running: restart it with backoff when it fails.

A component is a coroutine function taking the process's ``stopping`` event. It is
restarted from scratch after any error (it rebuilds its state from Kafka), so a lost
broker or a broken connection costs a delay, never the process. The error's
``retriable`` flag (``errors.retriable``) decides how it is reported: an expected outage
as one warning line, anything else (a bug) with its traceback.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from headwater.runner.errors import retriable
from headwater.runner.flow.backoff import RECONNECT, Backoff, Retry, pause

log = logging.getLogger(__name__)

Component = Callable[[asyncio.Event], Awaitable[None]]
_HEALTHY_AFTER = 60.0


async def supervise(
    name: str, component: Component, stopping: asyncio.Event, backoff: Backoff = RECONNECT
) -> None:
    retry = Retry(backoff)
    while not stopping.is_set():
        started = time.monotonic()
        try:
            await component(stopping)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if time.monotonic() - started > _HEALTHY_AFTER:
                retry.succeeded()
            wait = retry.failed()
            log.warning(
                "%s failed (%s: %s); restarting in %.1fs",
                name,
                type(exc).__name__,
                exc,
                wait,
                exc_info=not retriable(exc),
            )
            await pause(stopping, wait)
