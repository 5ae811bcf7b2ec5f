"""The Service Bus test server's in-memory entities: queues, topic subscriptions, dead-letter
sub-queues, peek-lock locks.  Pure: no sockets, no AMQP links; time comes from an injected
clock (seconds since the epoch, because lock and enqueue times go on the wire as wall time).

Invariants:
- A message is in exactly one place: ready in one entity, locked by one lock, or gone.
- A lock token is valid from ``take`` until the message is settled or the lock expires;
  afterwards every use of it raises ``LockLost`` (the SDK's MessageLockLostError).
- ``delivery_count`` counts failed deliveries (abandon, lock expiry): it is the AMQP header's
  delivery-count, so a first delivery shows 0.  Reaching ``max_delivery_count`` moves the
  message to its entity's dead-letter queue with reason ``MaxDeliveryCountExceeded``.
  A release (the SDK releases messages that arrive while no receive call waits) does not count.
- Ready messages are handed out lowest sequence number first, so an abandoned or expired
  message is redelivered before newer ones.
- Addresses are case-insensitive; ``amqps://host/`` prefixes are ignored.
  ``T/Subscriptions/S`` registers subscription S on topic T; ``X/$DeadLetterQueue`` is X's
  dead-letter queue (which has no dead-letter queue of its own).
- A send to T fans out to every subscription registered on T *at that moment*; a subscription
  registered later does not see earlier messages.  A send to a name with no subscriptions
  (and not declared a topic) is a queue send.  A declared topic with no subscriptions drops
  messages, like Service Bus.
"""

from __future__ import annotations

import heapq
import itertools
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from tests.servers.servicebus import codec

DEAD_LETTER_SUFFIX = "/$deadletterqueue"
SUBSCRIPTIONS = "/subscriptions/"
MAX_DELIVERY_REASON = "MaxDeliveryCountExceeded"


class LockLost(Exception):
    """The lock token is unknown, settled or expired."""


class Outcome(Enum):
    COMPLETE = "complete"
    ABANDON = "abandon"  # delivery count + 1
    RELEASE = "release"  # back to ready, delivery count unchanged
    DEAD_LETTER = "dead-letter"


@dataclass(eq=False)
class Stored:
    """One message in one entity."""

    sequence_number: int
    enqueued_at: float
    message: codec.Parsed
    delivery_count: int = 0


@dataclass(eq=False)
class Lock:
    token: uuid.UUID
    entity: Entity
    stored: Stored
    until: float


@dataclass(eq=False)
class Entity:
    """A queue, a subscription or a dead-letter queue."""

    name: str
    dead_letter: Entity | None = None
    ready: list[tuple[int, int, Stored]] = field(default_factory=list)  # heap
    locked: dict[uuid.UUID, Lock] = field(default_factory=dict)
    next_sequence: int = 1

    def push(self, stored: Stored) -> None:
        heapq.heappush(self.ready, (stored.sequence_number, next(_tiebreak), stored))

    def messages(self) -> list[Stored]:
        """Ready and locked messages, by sequence number (what a peek sees)."""
        stored = [item[2] for item in self.ready] + [lock.stored for lock in self.locked.values()]
        return sorted(stored, key=lambda s: s.sequence_number)


_tiebreak = itertools.count()


def entity_path(address: str) -> str:
    """``amqps://ns/Orders/Subscriptions/A`` -> ``orders/subscriptions/a``."""
    if "://" in address:
        address = address.split("://", 1)[1].partition("/")[2]
    return address.strip("/").lower()


class Broker:
    def __init__(
        self,
        lock_duration: float = 30.0,
        max_delivery_count: int = 10,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.lock_duration = lock_duration
        self.max_delivery_count = max_delivery_count
        self.clock = clock
        self._entities: dict[str, Entity] = {}
        self._topics: dict[str, set[str]] = {}  # topic -> subscription entity paths
        self._locks: dict[uuid.UUID, Lock] = {}
        self._dirty: set[str] = set()

    # -- entities ---------------------------------------------------------------------------

    def declare_topic(self, topic: str, subscriptions: list[str]) -> None:
        topic = entity_path(topic)
        self._topics.setdefault(topic, set())
        for name in subscriptions:
            self.entity(f"{topic}/Subscriptions/{name}")

    def entity(self, address: str) -> Entity:
        """The entity at ``address``, created (and registered with its topic) on first use."""
        path = entity_path(address)
        if path.endswith(DEAD_LETTER_SUFFIX):
            parent = self.entity(path[: -len(DEAD_LETTER_SUFFIX)])
            if parent.dead_letter is None:
                raise ValueError(f"{address!r}: a dead-letter queue has no dead-letter queue")
            return parent.dead_letter
        found = self._entities.get(path)
        if found is None:
            found = Entity(path, dead_letter=Entity(path + DEAD_LETTER_SUFFIX))
            self._entities[path] = found
            topic, sep, _ = path.partition(SUBSCRIPTIONS)
            if sep:
                self._topics.setdefault(topic, set()).add(path)
        return found

    def take_dirty(self) -> set[str]:
        """Entity paths that gained ready messages since the last call."""
        dirty, self._dirty = self._dirty, set()
        return dirty

    def _enqueue(self, entity: Entity, stored: Stored) -> None:
        entity.push(stored)
        self._dirty.add(entity.name)

    # -- sending ----------------------------------------------------------------------------

    def send(self, address: str, messages: list[codec.Parsed]) -> None:
        path = entity_path(address)
        if path in self._topics:
            targets = [self.entity(sub) for sub in sorted(self._topics[path])]
        else:
            targets = [self.entity(path)]
        now = self.clock()
        for target in targets:
            for message in messages:
                stored = Stored(target.next_sequence, now, message)
                target.next_sequence += 1
                self._enqueue(target, stored)

    # -- receiving and settling -------------------------------------------------------------

    def take(self, path: str, lock: bool) -> tuple[Stored, Lock | None] | None:
        """The next ready message: locked (peek-lock) or removed (receive-and-delete)."""
        entity = self.entity(path)
        if not entity.ready:
            return None
        stored = heapq.heappop(entity.ready)[2]
        if not lock:
            return stored, None
        held = Lock(uuid.uuid4(), entity, stored, self.clock() + self.lock_duration)
        entity.locked[held.token] = held
        self._locks[held.token] = held
        return stored, held

    def _release_lock(self, token: uuid.UUID) -> Lock:
        held = self._locks.get(token)
        if held is None or held.until <= self.clock():
            raise LockLost(f"lock {token} is lost (settled, expired or unknown)")
        del self._locks[token]
        del held.entity.locked[token]
        return held

    def settle(
        self,
        token: uuid.UUID,
        outcome: Outcome,
        reason: str | None = None,
        description: str | None = None,
    ) -> None:
        held = self._release_lock(token)
        if outcome is Outcome.COMPLETE:
            return
        if outcome is Outcome.RELEASE:
            self._enqueue(held.entity, held.stored)
        elif outcome is Outcome.ABANDON:
            self._failed(held.entity, held.stored)
        else:
            self._dead_letter(held.entity, held.stored, reason, description)

    def renew(self, token: uuid.UUID) -> float:
        held = self._locks.get(token)
        if held is None or held.until <= self.clock():
            raise LockLost(f"lock {token} is lost (settled, expired or unknown)")
        held.until = self.clock() + self.lock_duration
        return held.until

    def expire_locks(self) -> int:
        """Return every message whose lock ran out to its entity (delivery count + 1)."""
        now = self.clock()
        expired = [held for held in self._locks.values() if held.until <= now]
        for held in expired:
            del self._locks[held.token]
            del held.entity.locked[held.token]
            self._failed(held.entity, held.stored)
        return len(expired)

    def _failed(self, entity: Entity, stored: Stored) -> None:
        stored.delivery_count += 1
        if entity.dead_letter is not None and stored.delivery_count >= self.max_delivery_count:
            description = f"Message could not be consumed after {stored.delivery_count} attempts."
            self._dead_letter(entity, stored, MAX_DELIVERY_REASON, description)
        else:
            self._enqueue(entity, stored)

    def _dead_letter(
        self, entity: Entity, stored: Stored, reason: str | None, description: str | None
    ) -> None:
        if entity.dead_letter is None:  # dead-lettering from a dead-letter queue: keep it
            self._enqueue(entity, stored)
            return
        extra = {"DeadLetterReason": reason, "DeadLetterErrorDescription": description}
        message = codec.with_application_properties(
            stored.message, {key: value for key, value in extra.items() if value is not None}
        )
        moved = Stored(stored.sequence_number, stored.enqueued_at, message, stored.delivery_count)
        self._enqueue(entity.dead_letter, moved)

    # -- browsing ---------------------------------------------------------------------------

    def peek(self, address: str, from_sequence: int, count: int) -> list[Stored]:
        found = [s for s in self.entity(address).messages() if s.sequence_number >= from_sequence]
        return found[: max(count, 0)]
