"""Cancelled runs, as a worker process learns them from ``hw.cancels``.

The control processor writes a notice there (in the transaction that ends the run
``cancelled``) when a run it cancels had attempts out. Every worker process reads the
topic, from ``LOOK_BACK`` seconds back when it starts (so a worker that starts after the
cancel still knows it), and:

- stops an attempt of such a run that is executing (``stop``: a command's process group
  is killed, async code and HTTP calls are cancelled; a sync function's thread cannot be
  stopped and is abandoned, as on a timeout);
- does not start one that arrives later (a request still waiting in the route's topic).

Either way the attempt is reported failed and final; the run table ignores the result
(the task is no longer ``dispatched``), so nothing else changes. The set is bounded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable

import orjson

from headwater.runner.log import kafka
from headwater.runner.settings import Settings

log = logging.getLogger(__name__)

#: Seconds of notices read back when a worker process starts.
LOOK_BACK = 3_600.0
#: Cancelled run ids kept (oldest forgotten first).
KEEP = 100_000


class Cancels:
    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self._settings = settings
        self._clock = clock
        self._runs: OrderedDict[str, str] = OrderedDict()  # run id -> why
        self._watching: dict[str, list[Callable[[str], None]]] = {}

    def why(self, run_id: str) -> str | None:
        """Why the run was cancelled, if it was."""
        return self._runs.get(run_id)

    def watch(self, run_id: str, stop: Callable[[str], None]) -> Callable[[], None]:
        """Call ``stop(why)`` if ``run_id`` is cancelled; returns what ends the watch."""
        watchers = self._watching.setdefault(run_id, [])
        watchers.append(stop)

        def unwatch() -> None:
            watchers.remove(stop)
            if not watchers:
                self._watching.pop(run_id, None)

        return unwatch

    def heard(self, value: bytes | None) -> None:
        """One notice from the topic; a garbled one is logged and ignored."""
        try:
            notice = orjson.loads(value or b"")
            run_id, why = notice["run_id"], notice.get("reason") or "cancelled"
            if not isinstance(run_id, str) or not isinstance(why, str):
                raise TypeError("run_id and reason must be strings")
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            log.warning("cancels: a notice could not be read (%s); ignored", exc)
            return
        self._runs[run_id] = why
        self._runs.move_to_end(run_id)
        while len(self._runs) > KEEP:
            self._runs.popitem(last=False)
        for stop in list(self._watching.get(run_id, ())):
            stop(why)

    async def run(self, stopping: asyncio.Event) -> None:
        reader = kafka.consumer(self._settings, group=None, auto_offset_reset="latest")
        async with kafka.started(reader):
            await kafka.follow_from(
                reader, self._settings.topics.cancels, self._clock() - LOOK_BACK
            )
            while not stopping.is_set():
                batch = await reader.getmany(timeout_ms=500)
                for records in batch.values():
                    for record in records:
                        self.heard(record.value)
