"""An AMQP 1.0 Azure Service Bus test server on python-qpid-proton, for the real
``azure-servicebus`` SDK (sync and aio) with the connection string
``Endpoint=sb://127.0.0.1:PORT;SharedAccessKeyName=k;SharedAccessKey=v;UseDevelopmentEmulator=true;``.

Run from the repo root (prints ``servicebus test server listening on HOST:PORT`` when ready,
exits cleanly on SIGTERM/SIGINT)::

    python -m tests.servers.servicebus.server --host 127.0.0.1 --port 5672 \
        [--lock-duration 30] [--max-delivery-count 10] [--topic orders:billing,audit ...]

Implements: plain AMQP (the SDK skips SASL for the emulator; SASL ANONYMOUS also works),
CBS put-token (always 200); queues, topics and subscriptions created on first use (names
case-insensitive).  A receiver on ``T/Subscriptions/S`` registers S on T; a send to T then
fans out to the subscriptions registered at that moment: a subscription registered later
does NOT get earlier messages, and a send to T before any subscription exists is stored as
a plain queue T.  ``--topic T:S1,S2`` declares a topic and its subscriptions up front, so
messages sent before anyone receives (e.g. before the bridge starts) are kept.  Send and
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

Layout: ``broker.py`` holds the entity rules (pure, clock injected), ``codec.py`` the AMQP
message surgery, ``management.py`` the ``$cbs``/``$management`` answers, ``handler.py`` the
AMQP plumbing; this module runs them (CLI, or ``ServiceBusServer(...).start()`` in a thread).

Invariants: all AMQP and broker state is touched only on the proton reactor thread; the
ready line is printed only once the socket listens; SIGTERM/SIGINT stop the reactor within
one tick (50 ms) and the process exits 0.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from types import FrameType

from proton.reactor import Container

from tests.servers.servicebus.broker import Broker
from tests.servers.servicebus.handler import ServiceBusHandler


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
        self.handler = ServiceBusHandler(self.broker)
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
    """``["orders:billing,audit", "news"]`` -> ``{"orders": ["billing", "audit"], "news": []}``."""
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
    parser.add_argument(
        "--topic",
        action="append",
        default=[],
        metavar="TOPIC[:SUB1,SUB2]",
        help="declare a topic and its subscriptions (repeatable)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
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
