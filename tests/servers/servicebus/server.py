"""An AMQP 1.0 Azure Service Bus test server on python-qpid-proton, for the real
``azure-servicebus`` SDK (sync and aio) with the connection string
``Endpoint=sb://127.0.0.1:PORT;SharedAccessKeyName=k;SharedAccessKey=v;UseDevelopmentEmulator=true;``.

Run from the repo root (prints ``servicebus test server listening on HOST:PORT`` when ready,
exits cleanly on SIGTERM/SIGINT)::

    python -m tests.servers.servicebus.server --host 127.0.0.1 --port 5672 \
        [--lock-duration 30] [--max-delivery-count 10] [--topic orders:billing,audit ...]

Implements: SASL ANONYMOUS, CBS put-token (always 200); queues, topics and subscriptions
created on first use (a receiver on ``T/Subscriptions/S`` registers S on T; ``--topic``
declares them up front so messages sent before any receiver attaches are kept); send and
batch send; receive in peek-lock (16-byte delivery tags = lock tokens, ``x-opt-lock-token``,
``x-opt-locked-until``, ``x-opt-sequence-number``, ``x-opt-enqueued-time``, header
delivery-count) and receive-and-delete; link credit; complete, abandon, release and
dead-letter with the outcome echoed; dead-letter queues (``X/$DeadLetterQueue``) with
``DeadLetterReason`` / ``DeadLetterErrorDescription``; lock expiry (redelivery, delivery
count + 1, late settlement -> MessageLockLostError); max delivery count ->
``MaxDeliveryCountExceeded``; ``$management`` renew-lock, peek-message, update-disposition.

Does not implement: sessions (a session receiver is refused), scheduled messages,
deferral (a defer abandons the message and fails), transactions (refused), duplicate
detection, rules/filters/actions, message TTL/expiry, auto-forwarding, entity management
(the ATOM/HTTP API), partitions, size quotas, authentication (any token passes), TLS.
State is in memory only.  Locks survive a receiver's link or connection closing: the
messages come back when their locks expire, as with Service Bus.

Invariants: all AMQP and broker state is touched only on the proton reactor thread;
``broker.Broker`` holds the entity rules (see its docstring), this module the AMQP plumbing.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import uuid
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from proton import Condition, Delivery, Endpoint, Event, Handler, Link, Message, Terminus
from proton.reactor import Container

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


@dataclass(eq=False)
class Consumer:
    """A client's receive link on an entity."""

    link: Link
    path: str
    presettled: bool  # receive-and-delete
    deliveries: dict[Delivery, uuid.UUID] = field(default_factory=dict)


def _is_node(path: str) -> bool:
    return path == CBS or path.endswith(MANAGEMENT_SUFFIX)


def _refuse(link: Link, description: str) -> None:
    link.condition = Condition(NOT_IMPLEMENTED, description)
    link.open()
    link.close()


class ServiceBusHandler(Handler):  # type: ignore[misc]  # proton's Handler is untyped
    def __init__(self, broker: Broker, host: str, port: int) -> None:
        super().__init__()
        self.broker = broker
        self.host, self.port = host, port
        self.stopping = threading.Event()
        self._consumers: dict[Link, Consumer] = {}
        self._replies: dict[tuple[Any, str], Link] = {}  # (connection, node) -> reply link

    # -- lifecycle --------------------------------------------------------------------------

    def on_reactor_init(self, event: Event) -> None:
        event.container.schedule(TICK, self)

    def on_timer_task(self, event: Event) -> None:
        if self.stopping.is_set():
            event.container.stop()
            return
        self.broker.expire_locks()
        self._pump()
        event.container.schedule(TICK, self)

    def on_connection_bound(self, event: Event) -> None:
        sasl = event.transport.sasl()
        sasl.allowed_mechs("ANONYMOUS")

    def on_connection_remote_open(self, event: Event) -> None:
        if event.connection.state & Endpoint.LOCAL_UNINIT:
            event.connection.open()

    def on_session_remote_open(self, event: Event) -> None:
        if event.session.state & Endpoint.LOCAL_UNINIT:
            event.session.open()

    def on_link_remote_open(self, event: Event) -> None:
        link: Link = event.link
        if not link.state & Endpoint.LOCAL_UNINIT:
            return
        link.source.copy(link.remote_source)
        link.target.copy(link.remote_target)
        link.snd_settle_mode = link.remote_snd_settle_mode
        link.rcv_settle_mode = link.remote_rcv_settle_mode
        link.max_message_size = MAX_MESSAGE_SIZE
        if link.is_receiver:  # the client sends
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
        self._forget(event.link)
        if not event.link.state & Endpoint.LOCAL_CLOSED:
            event.link.close()

    def on_link_final(self, event: Event) -> None:
        self._forget(event.link)

    def on_session_remote_close(self, event: Event) -> None:
        if not event.session.state & Endpoint.LOCAL_CLOSED:
            event.session.close()

    def on_connection_remote_close(self, event: Event) -> None:
        self._forget_connection(event.connection)
        if not event.connection.state & Endpoint.LOCAL_CLOSED:
            event.connection.close()

    def on_transport_closed(self, event: Event) -> None:
        if event.connection is not None:
            self._forget_connection(event.connection)
            event.connection.free()

    def _forget(self, link: Link) -> None:
        self._consumers.pop(link, None)
        for key in [key for key, value in self._replies.items() if value == link]:
            del self._replies[key]

    def _forget_connection(self, connection: Any) -> None:
        for link in [link for link in self._consumers if link.connection == connection]:
            self._forget(link)
        for key in [key for key in self._replies if key[0] == connection]:
            del self._replies[key]

    # -- deliveries -------------------------------------------------------------------------

    def on_link_flow(self, event: Event) -> None:
        consumer = self._consumers.get(event.link)
        if consumer is not None:
            self._pump_consumer(consumer)

    def on_delivery(self, event: Event) -> None:
        link: Link = event.link
        delivery: Delivery = event.delivery
        if link.is_receiver:
            self._incoming(link, delivery)
        elif delivery.updated:
            self._settlement(link, delivery)
        self._pump()

    def _incoming(self, link: Link, delivery: Delivery) -> None:
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

    def _request(self, link: Link, path: str, raw: bytes) -> None:
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

    def _settlement(self, link: Link, delivery: Delivery) -> None:
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
            annotations = wire_annotations(stored, lock.token, lock.until) if lock else (
                wire_annotations(stored, None, None)
            )
            payload = codec.encode(stored.message, stored.delivery_count, annotations)
            delivery = link.delivery(token.bytes_le)  # the SDK: lock token = UUID(bytes_le=tag)
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
    if condition is None or condition.info is None:
        return {}
    info = condition.info
    info.rewind()
    if not info.next():
        return {}
    found = info.get_object()
    if not isinstance(found, dict):
        return {}
    return {str(k): str(v) for k, v in found.items() if v is not None}


class ServiceBusServer:
    """The server on ``host:port``; ``serve()`` blocks, ``start()`` runs it in a thread."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 5672,
        lock_duration: float = 30.0,
        max_delivery_count: int = 10,
        topics: dict[str, list[str]] | None = None,
    ) -> None:
        self.broker = Broker(lock_duration, max_delivery_count)
        for topic, subscriptions in (topics or {}).items():
            self.broker.declare_topic(topic, subscriptions)
        self.handler = ServiceBusHandler(self.broker, host, port)
        self.container = Container(self.handler)
        self._acceptor = self.container.listen(f"{host}:{port}")  # listening from here on
        self._thread: threading.Thread | None = None

    def serve(self) -> None:
        try:
            self.container.run()
        finally:
            self._acceptor.close()

    def start(self) -> ServiceBusServer:
        self._thread = threading.Thread(target=self.serve, name="servicebus-server", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self.handler.stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)


def parse_topics(values: list[str]) -> dict[str, list[str]]:
    """``["orders:billing,audit", "empty"]`` -> ``{"orders": ["billing", "audit"], "empty": []}``."""
    topics: dict[str, list[str]] = {}
    for value in values:
        topic, _, subs = value.partition(":")
        topics.setdefault(topic, []).extend(s for s in subs.split(",") if s)
    return topics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="AMQP Service Bus test server (in memory).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5672)
    parser.add_argument("--lock-duration", type=float, default=30.0, metavar="SECONDS")
    parser.add_argument("--max-delivery-count", type=int, default=10)
    parser.add_argument("--topic", action="append", default=[], metavar="TOPIC[:SUB1,SUB2]",
                        help="declare a topic and its subscriptions (repeatable)")
    args = parser.parse_args(argv)
    server = ServiceBusServer(
        args.host, args.port, args.lock_duration, args.max_delivery_count, parse_topics(args.topic)
    )

    def _stop(signum: int, frame: FrameType | None) -> None:
        server.handler.stopping.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    print(f"servicebus test server listening on {args.host}:{args.port}", flush=True)
    server.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
