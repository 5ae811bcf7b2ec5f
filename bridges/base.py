"""The source interface every bridge implements (pull-based, acknowledged per delivery).

A source hands out native messages as ``Delivery`` objects; the pump maps them to
CloudEvents, writes them to Kafka and then calls ``ack`` for the deliveries whose events
Kafka acknowledged and ``nack`` for the others. Sources settle in batches because every
cloud does (SQS ``DeleteMessageBatch``, Pub/Sub acknowledge lists, Service Bus locks).

A dropped connection raises ``NotConnected`` (from ``receive``/``ack``/``nack``); the pump
then closes the source and calls ``connect`` again with backoff.

A source whose service has a dead-letter queue of its own (Service Bus) also implements
``DeadLettering``; for the others, the pump writes a delivery that cannot be mapped to
Kafka's DLQ topic and then acks it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable

T = TypeVar("T")


@dataclass(slots=True)
class Delivery:
    """One message as the source delivered it, before any mapping.

    ``kind`` selects the mapper (see ``headwater.bridges.mapping``); ``handle`` is what the
    source needs to settle it (receipt handle, ack id, lock token); ``attributes`` are the
    message's own attributes/properties (not the service's bookkeeping); ``key`` is the
    ordering key, used as the Kafka key when present; ``time`` is when the service accepted
    the message (RFC 3339).
    """

    kind: str
    message_id: str
    body: bytes
    handle: Any = None
    attributes: dict[str, str] = field(default_factory=dict)
    key: str | None = None
    origin: str = ""
    time: str | None = None


class Source(Protocol):
    """What the pump needs from a bridge."""

    @property
    def name(self) -> str:
        """Where it reads from, for logs and the DLQ (e.g. the queue URL)."""
        ...

    async def connect(self) -> None: ...

    async def receive(self, max_messages: int) -> list[Delivery]:
        """Wait (bounded, e.g. a long poll) for up to ``max_messages`` deliveries."""
        ...

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Settle for good: every event made from these deliveries is in Kafka."""
        ...

    async def nack(self, deliveries: Sequence[Delivery]) -> None:
        """Give back for redelivery: their events could not be written."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class DeadLettering(Protocol):
    """A source that dead-letters unmappable messages in its own service."""

    async def dead_letter(self, delivery: Delivery, reason: str) -> None: ...


async def take_batch(queue: asyncio.Queue[T], max_items: int, wait: float) -> list[T]:
    """Up to ``max_items`` from ``queue``: wait at most ``wait`` s for the first, none after."""
    try:
        first = await asyncio.wait_for(queue.get(), wait)
    except TimeoutError:
        return []
    batch = [first]
    while len(batch) < max_items and not queue.empty():
        batch.append(queue.get_nowait())
    return batch
