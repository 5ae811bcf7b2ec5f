"""One backoff schedule for every retry headwater makes. Pure, no I/O but ``pause``.

``Backoff.delay(n, r)`` is the wait after the ``n``-th consecutive failure:
``initial * multiplier**(n-1)``, capped at ``maximum``, then jittered by ``±jitter``
using ``r`` in [0, 1) (randomness is injected, so schedules are unit-tested exactly).
``Retry`` counts one loop's consecutive failures; ``pause`` waits unless the process stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff between attempts: ``initial * multiplier**n``, capped, jittered."""

    initial: float = 1.0
    maximum: float = 60.0
    multiplier: float = 2.0
    jitter: float = 0.1

    def delay(self, failed_attempts: int, unit_random: float) -> float:
        """Seconds to wait after ``failed_attempts`` failures; ``unit_random`` in [0, 1)."""
        base = min(self.maximum, self.initial * self.multiplier ** max(0, failed_attempts - 1))
        return base * (1 + self.jitter * (2 * unit_random - 1))


#: Restarting a component, reconnecting a source, waiting for Kafka at start-up.
RECONNECT = Backoff(initial=0.5, maximum=10.0, multiplier=2.0, jitter=0.2)


class Retry:
    """The consecutive failures of one loop and the wait each one earns."""

    def __init__(
        self, backoff: Backoff = RECONNECT, rand: Callable[[], float] = random.random
    ) -> None:
        self._backoff = backoff
        self._rand = rand
        self.failures = 0

    def failed(self) -> float:
        """Count a failure; the seconds to wait before the next try."""
        self.failures += 1
        return self._backoff.delay(self.failures, self._rand())

    def succeeded(self) -> None:
        self.failures = 0


async def pause(stopping: asyncio.Event, seconds: float) -> None:
    """Wait ``seconds``, or less if ``stopping`` is set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), seconds)
