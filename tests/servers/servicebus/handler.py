"""The Service Bus test server's AMQP side: one proton ``Handler`` that opens what clients
open, answers ``$cbs`` and ``ENTITY/$management`` requests, stores what clients send and
hands messages to receive links as their credit allows.

Invariants:
- Runs only on the proton reactor thread; it is the only code touching the ``Broker``.
- A message goes out only on a link with credit; a peek-lock delivery's tag is its lock
  token (``UUID.bytes_le``: the SDK reads ``UUID(bytes_le=tag)``) and stays unsettled until
  the client settles it; the server then settles it with the outcome it applied (the
  requested one, or ``rejected`` + ``com.microsoft:message-lock-lost`` when the lock is gone).
- A successful dead-letter is echoed as ``rejected`` WITHOUT an error: the SDK treats a
  rejected outcome that carries an error as a failed settlement.
- Locks outlive links and connections (a crashed receiver's messages return when their
  locks expire, as with Service Bus).
- An exception in one event is logged and closes that client's connection; the server
  keeps serving the others.
"""

from __future__ import annotations

import functools
import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from proton import (
    Condition,
    Connection,
    Delivery,
    Endpoint,
    Event,
    Handler,
    Link,
    Message,
    Receiver,
    Sender,
    Terminus,
)

from tests.servers.servicebus import codec
from tests.servers.servicebus.broker import Broker, LockLost, Outcome, entity_path
from tests.servers.servicebus.management import (
    LOCK_LOST,
    cbs_response,
    management_response,
    wire_annotations,
)

CBS = "$cbs"
MANAGEMENT_SUFFIX = "/$management"
CREDIT = 500  # credit kept open on links the clients send on
TICK = 0.05  # seconds between lock-expiry sweeps / stop checks
MAX_MESSAGE_SIZE = 1024 * 1024
NOT_IMPLEMENTED = "amqp:not-implemented"
T = TypeVar("T")
EventMethod = Callable[["ServiceBusHandler", Event], None]
logger = logging.getLogger(__name__)


def _guarded(method: EventMethod) -> EventMethod:
    """Log an exception raised while handling an event and close that client's connection,
    instead of letting it stop the reactor (and so the whole server)."""

    @functools.wraps(method)
    def wrapper(self: ServiceBusHandler, event: Event) -> None:
        try:
            method(self, event)
        except Exception:
            logger.exception("servicebus test server: error handling %s", event.type)
            connection = event.connection
            if connection is not None and not connection.state & Endpoint.LOCAL_CLOSED:
                connection.condition = Condition("amqp:internal-error", "test server error")
                connection.close()

    return wrapper


@dataclass(eq=False)
class Consumer:
    """A client's receive link on an entity."""

    link: Sender
    path: str
    presettled: bool  # receive-and-delete
    deliveries: dict[Delivery, uuid.UUID] = field(default_factory=dict)


def _is_node(path: str) -> bool:
    return path == CBS or path.endswith(MANAGEMENT_SUFFIX)


def _required(value: T | None) -> T:
    assert value is not None, "proton event without the endpoint it is about"
    return value


def _refuse(link: Link, description: str) -> None:
    link.condition = Condition(NOT_IMPLEMENTED, description)
    link.open()
    link.close()


class ServiceBusHandler(Handler):
    def __init__(self, broker: Broker) -> None:
        super().__init__()
        self.broker = broker
        self.stopping = threading.Event()
        self._consumers: dict[Link, Consumer] = {}
        self._replies: dict[tuple[Connection, str], Sender] = {}  # (connection, node) -> link

    # -- lifecycle --------------------------------------------------------------------------

    def on_reactor_init(self, event: Event) -> None:
        event.container.schedule(TICK, self)

    def on_timer_task(self, event: Event) -> None:
        if self.stopping.is_set():
            event.container.stop()
            return
        event.container.schedule(TICK, self)
        self._sweep(event)

    @_guarded
    def _sweep(self, event: Event) -> None:
        self.broker.expire_locks()
        self._pump()

    def on_connection_bound(self, event: Event) -> None:
        sasl = _required(event.transport).sasl()
        sasl.allowed_mechs("ANONYMOUS")

    def on_connection_remote_open(self, event: Event) -> None:
        connection = _required(event.connection)
        if connection.state & Endpoint.LOCAL_UNINIT:
            connection.open()

    def on_session_remote_open(self, event: Event) -> None:
        session = _required(event.session)
        if session.state & Endpoint.LOCAL_UNINIT:
            session.open()

    @_guarded
    def on_link_remote_open(self, event: Event) -> None:
        link = event.link
        assert link is not None
        if not link.state & Endpoint.LOCAL_UNINIT:
            return
        link.source.copy(link.remote_source)
        link.target.copy(link.remote_target)
        link.snd_settle_mode = link.remote_snd_settle_mode
        link.rcv_settle_mode = link.remote_rcv_settle_mode
        link.max_message_size = MAX_MESSAGE_SIZE
        if isinstance(link, Receiver):  # the client sends
            if link.remote_target.type == Terminus.COORDINATOR:
                _refuse(link, "transactions are not implemented by the test server")
                return
            link.open()
            link.flow(CREDIT)
            return
        path = entity_path(link.remote_source.address or "")
        if _is_node(path):
            self._replies[(link.connection, path)] = link
            target = entity_path(link.remote_target.address or "")
            self._replies.setdefault((link.connection, target), link)
            link.open()
            return
        if self._has_session_filter(link):
            _refuse(link, "sessions are not implemented by the test server")
            return
        self.broker.entity(path)  # create (and register a subscription) now
        presettled = link.remote_snd_settle_mode == Link.SND_SETTLED
        self._consumers[link] = Consumer(link, path, presettled)
        link.open()
        self._pump_consumer(self._consumers[link])

    @staticmethod
    def _has_session_filter(link: Link) -> bool:
        filters = link.remote_source.filter
        filters.rewind()
        if not filters.next():
            return False
        found = filters.get_object()
        return isinstance(found, dict) and any("session-filter" in str(key) for key in found)

    def on_link_remote_close(self, event: Event) -> None:
        link = _required(event.link)
        self._forget(link)
        if not link.state & Endpoint.LOCAL_CLOSED:
            link.close()

    def on_link_final(self, event: Event) -> None:
        self._forget(_required(event.link))

    def on_session_remote_close(self, event: Event) -> None:
        session = _required(event.session)
        if not session.state & Endpoint.LOCAL_CLOSED:
            session.close()

    def on_connection_remote_close(self, event: Event) -> None:
        connection = _required(event.connection)
        self._forget_connection(connection)
        if not connection.state & Endpoint.LOCAL_CLOSED:
            connection.close()

    def on_transport_closed(self, event: Event) -> None:
        if event.connection is not None:
            self._forget_connection(event.connection)
            event.connection.free()

    def _forget(self, link: Link) -> None:
        self._consumers.pop(link, None)
        for key in [key for key, value in self._replies.items() if value == link]:
            del self._replies[key]

    def _forget_connection(self, connection: Connection) -> None:
        for link in [link for link in self._consumers if link.connection == connection]:
            self._forget(link)
        for key in [key for key in self._replies if key[0] == connection]:
            del self._replies[key]

    # -- deliveries -------------------------------------------------------------------------

    @_guarded
    def on_link_flow(self, event: Event) -> None:
        consumer = self._consumers.get(_required(event.link))
        if consumer is not None:
            self._pump_consumer(consumer)

    @_guarded
    def on_delivery(self, event: Event) -> None:
        link, delivery = event.link, _required(event.delivery)
        assert link is not None
        if isinstance(link, Receiver):
            self._incoming(link, delivery)
        elif delivery.updated:
            self._settlement(link, delivery)
        self._pump()

    def _incoming(self, link: Receiver, delivery: Delivery) -> None:
        if not delivery.readable or delivery.partial:
            return
        raw = bytes(link.recv(delivery.pending) or b"")
        link.advance()
        if link.credit < CREDIT // 2:
            link.flow(CREDIT - link.credit)
        if delivery.aborted:
            delivery.settle()
            return
        path = entity_path(link.remote_target.address or "")
        if _is_node(path):
            self._request(link, path, raw)
            state = Delivery.ACCEPTED
        else:
            try:
                self.broker.send(path, [codec.parse(m) for m in codec.unbatch(raw)])
                state = Delivery.ACCEPTED
            except codec.CodecError as exc:
                delivery.local.condition = Condition("amqp:decode-error", str(exc))
                state = Delivery.REJECTED
        if not delivery.settled:
            delivery.update(state)
        delivery.settle()

    def _request(self, link: Receiver, path: str, raw: bytes) -> None:
        request = Message()
        request.decode(raw)
        if path == CBS:
            response = cbs_response(request)
        else:
            response = management_response(self.broker, path[: -len(MANAGEMENT_SUFFIX)], request)
        reply_to = entity_path(request.reply_to or path)
        sender = self._replies.get((link.connection, reply_to)) or self._replies.get(
            (link.connection, path)
        )
        if sender is not None:
            sender.send(response)

    def _settlement(self, link: Sender, delivery: Delivery) -> None:
        consumer = self._consumers.get(link)
        token = consumer.deliveries.pop(delivery, None) if consumer else None
        if token is None:  # a management reply, or a delivery we already settled
            delivery.settle()
            return
        state = delivery.remote_state
        remote = delivery.remote
        reason = description = None
        if state == Delivery.ACCEPTED:
            outcome = Outcome.COMPLETE
        elif state == Delivery.RELEASED:
            outcome = Outcome.RELEASE
        elif state == Delivery.REJECTED:
            outcome = Outcome.DEAD_LETTER
            info = _info(remote.condition)
            reason = info.get("DeadLetterReason")
            description = info.get("DeadLetterErrorDescription")
        elif state == Delivery.MODIFIED:
            outcome = Outcome.ABANDON
        else:  # not a terminal outcome yet
            consumer.deliveries[delivery] = token  # type: ignore[union-attr]
            return
        try:
            self.broker.settle(token, outcome, reason, description)
            if state == Delivery.MODIFIED:
                delivery.local.failed = remote.failed
                delivery.local.undeliverable = remote.undeliverable
                if remote.undeliverable:  # the SDK's defer
                    delivery.local.condition = Condition(
                        NOT_IMPLEMENTED, "deferral is not implemented; the message was abandoned"
                    )
                    state = Delivery.REJECTED
            delivery.update(state)
        except LockLost as exc:
            delivery.local.condition = Condition(LOCK_LOST, str(exc))
            delivery.update(Delivery.REJECTED)
        delivery.settle()

    def _pump(self) -> None:
        """Hand ready messages to every consumer of every entity that gained some."""
        for path in self.broker.take_dirty():
            for consumer in [c for c in self._consumers.values() if c.path == path]:
                self._pump_consumer(consumer)

    def _pump_consumer(self, consumer: Consumer) -> None:
        link = consumer.link
        if not (link.state & Endpoint.LOCAL_ACTIVE and link.state & Endpoint.REMOTE_ACTIVE):
            return
        while link.credit > 0:
            taken = self.broker.take(consumer.path, lock=not consumer.presettled)
            if taken is None:
                break
            stored, lock = taken
            token = lock.token if lock else uuid.uuid4()
            annotations = wire_annotations(stored, lock)
            payload = codec.encode(stored.message, stored.delivery_count, annotations)
            # the SDK derives the lock token as UUID(bytes_le=tag); proton takes bytes tags
            delivery = link.delivery(token.bytes_le)  # type: ignore[arg-type]
            link.send(payload)
            link.advance()
            if consumer.presettled:
                delivery.settle()
            else:
                consumer.deliveries[delivery] = token
        if link.drain_mode and link.credit > 0:
            link.drained()


def _info(condition: Condition | None) -> dict[str, str]:
    """A rejected outcome's error info as ``{str: str}`` (None values dropped)."""
    info = condition.info if condition is not None else None
    if not isinstance(info, dict):
        return {}
    return {str(k): str(v) for k, v in info.items() if v is not None}
