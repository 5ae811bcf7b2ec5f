"""A circuit breaker for one task route (or one task): pure, the clock injected.

closed -> open when ``failures`` consecutive retriable failures came, or when at least
``min_calls`` outcomes inside the last ``window`` seconds failed at ``rate`` or more;
open -> half-open once its cooldown passed (``cooldown``, times ``growth`` for each open
after the first in a row, capped at ``max_cooldown``); half-open lets ``probes`` calls
through: one that succeeds closes it (and resets the cooldown), one that fails opens it
again, longer. What must hold: only retriable failures count (a bug in a task is not an
outage); while open, ``allow`` refuses every call, so the caller waits and burns no
attempt; a result of a call let through before the breaker opened still counts.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

State = Literal["closed", "open", "half-open"]


@dataclass(frozen=True, slots=True)
class BreakerSpec:
    failures: int = 5  # consecutive retriable failures that open it
    rate: float | None = None  # or this failure rate (0..1] over the window
    window: float = 60.0  # seconds of outcomes the rate looks at
    min_calls: int = 20  # outcomes inside the window before a rate can open it
    cooldown: float = 30.0  # seconds open before the first probe
    growth: float = 2.0  # cooldown multiplier for each re-open in a row
    max_cooldown: float = 600.0
    probes: int = 1  # calls let through while half-open

    def __post_init__(self) -> None:
        if self.failures < 1 or self.probes < 1 or self.min_calls < 1:
            raise ValueError("failures, probes and min_calls must be at least 1")
        if self.rate is not None and not 0 < self.rate <= 1:
            raise ValueError("rate must be in (0, 1]")
        if min(self.window, self.cooldown, self.max_cooldown) <= 0 or self.growth < 1:
            raise ValueError("window and cooldowns must be positive, growth at least 1")


class Breaker:
    def __init__(self, spec: BreakerSpec, clock: Callable[[], float]) -> None:
        self.spec = spec
        self._clock = clock
        self._state: State = "closed"
        self._consecutive = 0
        self._outcomes: deque[tuple[float, bool]] = deque()  # (at, failed) in the window
        self._opens = 0  # opens in a row (reset by a close)
        self._open_until = 0.0
        self._probing = 0  # probes let through and not yet reported

    @property
    def state(self) -> State:
        if self._state == "open" and self._clock() >= self._open_until:
            self._state, self._probing = "half-open", 0
        return self._state

    @property
    def reopens_at(self) -> float | None:
        """When an open breaker lets its first probe through (None unless open)."""
        return self._open_until if self.state == "open" else None

    def ready(self) -> bool:
        """Whether ``allow`` would let a call go now (asks only: takes no probe)."""
        state = self.state
        return state == "closed" or (state == "half-open" and self._probing < self.spec.probes)

    def allow(self) -> bool:
        """Whether one more call may go now (half-open: counts as a probe)."""
        state = self.state
        if state == "closed":
            return True
        if state == "half-open" and self._probing < self.spec.probes:
            self._probing += 1
            return True
        return False

    def abandoned(self) -> None:
        """A call let through ended without an outcome (its worker stopped): a probe it
        held is free again, nothing counts."""
        if self._state == "half-open" and self._probing > 0:
            self._probing -= 1

    def succeeded(self) -> None:
        self._record(failed=False)
        if self._state == "half-open":
            self._state, self._opens, self._probing = "closed", 0, 0
            self._outcomes.clear()
        self._consecutive = 0

    def failed(self, retriable: bool) -> None:
        """A call failed; only a ``retriable`` failure counts against the service."""
        if not retriable:  # the service answered: for the breaker, it works
            self.succeeded()
            return
        self._record(failed=True)
        self._consecutive += 1
        if self._state == "half-open" or self._tripped():
            self._open()

    def _tripped(self) -> bool:
        if self._state != "closed":
            return False
        if self._consecutive >= self.spec.failures:
            return True
        if self.spec.rate is None or len(self._outcomes) < self.spec.min_calls:
            return False
        failed = sum(1 for _, bad in self._outcomes if bad)
        return failed / len(self._outcomes) >= self.spec.rate

    def _open(self) -> None:
        spec = self.spec
        cooldown = min(spec.max_cooldown, spec.cooldown * spec.growth**self._opens)
        self._opens += 1
        self._state, self._probing = "open", 0
        self._open_until = self._clock() + cooldown
        self._consecutive = 0
        self._outcomes.clear()

    def _record(self, failed: bool) -> None:
        if self.spec.rate is None:  # only a rate looks at the window: keep nothing
            return
        now = self._clock()
        self._outcomes.append((now, failed))
        while self._outcomes and self._outcomes[0][0] <= now - self.spec.window:
            self._outcomes.popleft()
