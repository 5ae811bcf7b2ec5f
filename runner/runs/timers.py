"""The control processor's timers: retries due, batching windows due, marker sweeps.

A timer that goes off writes its ``Due`` message to ``control``, so it is
applied in order with the partition's other messages, in a transaction; a timer is
therefore only a hint, and a lost one is armed again by the next restore. What must hold:
a partition's timers die with its assignment (``forget``), and a timer that went off is
released (memory holds only pending timers); a failed publish is tried
again by the backoff schedule while the partition is still here; each partition has at
most one sweep timer, also after a restore re-arms it.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import Any

from headwater.runner.flow.backoff import Backoff
from headwater.runner.log.records import Due, MarkersDue, encode_control

log = logging.getLogger(__name__)

#: How soon a timer whose message Kafka did not take is tried again.
REPUBLISH = Backoff(initial=1.0, maximum=1.0, jitter=0.0)


class Timers:
    def __init__(self, producer: Any, control: str, clock: Callable[[], float]) -> None:
        self._producer = producer
        self._control = control
        self._clock = clock
        self._handles: dict[int, set[asyncio.TimerHandle]] = {}
        self._sweeps: dict[int, asyncio.TimerHandle] = {}
        self._background: set[asyncio.Task[None]] = set()

    def reset(self, partition: int) -> None:
        """Cancel a partition's timers and start it afresh (a restore re-arms them)."""
        self.forget(partition)
        self._handles[partition] = set()

    def forget(self, partition: int) -> None:
        self._sweeps.pop(partition, None)
        for handle in self._handles.pop(partition, set()):
            handle.cancel()

    def clear(self) -> None:
        for partition in list(self._handles):
            self.forget(partition)
        self._sweeps.clear()

    def arm(self, partition: int, due: Due, at: float) -> None:
        delay = max(0.0, at - self._clock())
        handles = self._handles.setdefault(partition, set())
        holder: list[asyncio.TimerHandle] = []  # the handle, for ``_fire`` to release
        handle = asyncio.get_running_loop().call_later(delay, self._fire, partition, due, holder)
        holder.append(handle)
        handles.add(handle)
        if isinstance(due, MarkersDue):  # one sweep timer per partition, also after a replay
            previous = self._sweeps.get(partition)
            if previous is not None:
                previous.cancel()
                handles.discard(previous)
            self._sweeps[partition] = handle

    async def _publish(self, partition: int, due: Due) -> None:
        """The message goes to the partition it was armed for: that of its run, window or
        group (also when the run's key is its group's, not its id: ``runs.flow``)."""
        value = encode_control(due)
        await self._producer.send_and_wait(self._control, value, partition=partition)

    def pending(self, partition: int) -> int:
        """How many timers of ``partition`` have not gone off yet."""
        return len(self._handles.get(partition, ()))

    def _fire(self, partition: int, due: Due, holder: list[asyncio.TimerHandle]) -> None:
        self._handles.get(partition, set()).discard(holder[0])  # gone off: release it
        task = asyncio.ensure_future(self._send(partition, due))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _send(self, partition: int, due: Due) -> None:
        try:
            await self._publish(partition, due)
        except Exception:  # noqa: BLE001 - Kafka unavailable: try again shortly
            log.warning("could not publish %s; trying again", due)
            if partition in self._handles:
                self.arm(partition, due, self._clock() + REPUBLISH.delay(1, random.random()))
