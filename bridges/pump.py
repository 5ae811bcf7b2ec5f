"""The pump: moves deliveries from a source into Kafka, acking only what Kafka acked.

What must always hold: a delivery is acked at the source only after Kafka acknowledged
(``acks=all``, idempotent producer) every event made from it; a delivery with any failed
write is nacked for redelivery, and the producer is renewed. A delivery that cannot be
mapped is written to the DLQ with the reason and then acked: bad input never stops the
stream. So does a delivery whose event is too large for a Kafka record (its DLQ entry
keeps the payload's head and its size, with the source message id); its batch-mates
flow. Because the pump pulls only when the previous batch is settled, and not at all while
the events waiting for the router pass their bound (``valve``, kept by the process's
``backpressure``), the source is the buffer. A source that cannot be reached is reported
(``report``: ``service.unhealthy``, then ``service.healthy`` once it is back).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaProducer

from headwater.bridges.base import DeadLettering, Delivery, Source
from headwater.bridges.mapping import to_cloudevents
from headwater.runner import metrics
from headwater.runner.envelope import to_kafka
from headwater.runner.errors import BadMessage, NotConnected, RecordTooLarge
from headwater.runner.flow.backoff import RECONNECT, Backoff, Retry, pause
from headwater.runner.flow.gate import REASON_CHARS, Change
from headwater.runner.flow.pressure import EVENTS_NOT_ROUTED, Valve
from headwater.runner.log import kafka
from headwater.runner.log.records import dlq_record
from headwater.runner.settings import Topics

log = logging.getLogger(__name__)
#: Seconds between looks at a closed valve (the router far behind: nothing is pulled).
VALVE_WAIT = 0.2


class Pump:
    """``new_producer`` makes the pump's Kafka producer: one at the start, and a fresh one
    after any failed write (an idempotent producer whose batch failed can be left with
    sequence numbers the broker refuses forever: OutOfOrderSequenceNumber on every retry).
    No delivery is pulled while no producer could be started: the source is the buffer."""

    def __init__(
        self,
        source: Source,
        new_producer: Callable[[], AIOKafkaProducer],
        topics: Topics,
        batch_size: int = 100,
        write_timeout: float = 15.0,
        backoff: Backoff = RECONNECT,
        valve: Valve | None = None,
        report: Callable[[Change], None] | None = None,
    ) -> None:
        self._source = source
        self._new_producer = new_producer
        self._producer: AIOKafkaProducer | None = None
        self._writer: kafka.BatchWriter
        self._topics = topics
        self._batch_size = batch_size
        self._write_timeout = write_timeout
        self._backoff = backoff
        self._valve = valve
        self._report = report
        self._down = False  # the source's outage has been reported
        self._counted = [0, 0]

    async def run(self, stopping: asyncio.Event) -> None:
        await self._reconnect(stopping, first=True)
        retry = Retry(self._backoff)
        try:
            while not stopping.is_set():
                try:
                    if self._producer is None and not await self._start_producer():
                        await pause(stopping, retry.failed())
                        continue
                    if self._valve is not None and not self._valve.is_open:
                        await pause(stopping, VALVE_WAIT)  # the source stays the buffer
                        continue
                    deliveries = await self._receive_unless(stopping)
                    if not deliveries:
                        continue
                    written, failed = await self._forward(deliveries)
                    if self._valve is not None:  # counted before the next look does
                        self._valve.add(EVENTS_NOT_ROUTED, len(written))
                    if written:
                        await self._source.ack(written)
                    if failed:
                        await self._source.nack(failed)
                        await self._drop_producer()  # a fresh one for the redelivery
                        await pause(stopping, retry.failed())
                    else:
                        retry.succeeded()
                except NotConnected as exc:
                    log.warning("%s: connection lost (%s); reconnecting", self._source.name, exc)
                    await self._reconnect(stopping)
        finally:
            await self._drop_producer()
            await self._source.close()

    async def _start_producer(self) -> bool:
        producer = self._new_producer()
        try:
            await asyncio.wait_for(producer.start(), self._write_timeout)
        except Exception as exc:  # noqa: BLE001 - Kafka away: pull nothing, try again
            log.warning("%s: cannot reach Kafka (%s); not pulling", self._source.name, exc)
            with contextlib.suppress(Exception):
                await producer.stop()
            return False
        self._producer, self._writer = producer, kafka.BatchWriter(producer)
        return True

    async def _drop_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):  # its writes were settled already
                await asyncio.wait_for(producer.stop(), self._write_timeout)

    async def _receive_unless(self, stopping: asyncio.Event) -> list[Delivery]:
        """The next batch, or nothing once ``stopping`` is set: a long poll in progress is
        cancelled, which settles nothing (the source redelivers what it had handed out)."""
        receive = asyncio.ensure_future(self._source.receive(self._batch_size))
        stop = asyncio.ensure_future(stopping.wait())
        await asyncio.wait({receive, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if receive.done():
            return receive.result()
        receive.cancel()
        with contextlib.suppress(asyncio.CancelledError, NotConnected):
            await receive
        return []

    async def _reconnect(self, stopping: asyncio.Event, first: bool = False) -> None:
        retry = Retry(self._backoff)
        if not first:
            await self._source.close()
        while not stopping.is_set():
            try:
                await self._source.connect()
                log.info("%s: connected", self._source.name)
                self._tell("service.healthy", "")
                return
            except NotConnected as exc:
                delay = retry.failed()
                log.warning(
                    "%s: cannot connect (%s); retrying in %.1fs", self._source.name, exc, delay
                )
                self._tell("service.unhealthy", str(exc))
                await pause(stopping, delay)

    def _tell(self, kind: str, reason: str) -> None:
        """Report the source going away (the first failed connect of an outage) and coming
        back, as the services a task needs are reported (``hw.status``)."""
        down = kind == "service.unhealthy"
        if self._report is None or down == self._down:
            return
        self._down = down
        name = self._source.name
        data = {"service": name, "bridge": True, "reason": reason[:REASON_CHARS]}
        self._report(Change(kind, f"source {name}", data))

    async def _forward(self, deliveries: list[Delivery]) -> tuple[list[Delivery], list[Delivery]]:
        """Write every delivery's events; returns (written, failed) deliveries.

        The events of one pull go out as per-partition batches and are acknowledged (or
        not) together: if any write fails, every delivery of the pull is redelivered, and
        the copies that did land are deduplicated downstream (same event id, same run id).
        """
        dead_lettered: set[int] = set()  # settled at the source already: neither ack nor nack
        self._counted = [0, 0]  # events and bytes written, counted once Kafka has them
        try:
            # aiokafka can block inside a send while the broker is away: bound it too.
            writes = self._write(deliveries, dead_lettered)
            futures = await asyncio.wait_for(writes, self._write_timeout)
            missing = await kafka.unacknowledged(futures, self._write_timeout)
        except Exception as exc:  # noqa: BLE001 - Kafka refused the writes: redeliver later
            log.warning("%s: cannot write to Kafka: %s", self._source.name, exc)
            self._writer.discard()
            missing = {_failed(exc)}
        pending = [d for d in deliveries if id(d) not in dead_lettered]
        if missing:
            log.warning(
                "%s: %d message(s) not acknowledged by Kafka within %.0fs; "
                "they will be redelivered",
                self._source.name,
                len(pending),
                self._write_timeout,
            )
            return [], pending
        if self._counted[0]:
            name, cloud = self._source.name, CLOUDS.get(deliveries[0].kind, deliveries[0].kind)
            metrics.EVENTS_IN.labels(name, cloud).inc(self._counted[0])
            metrics.BYTES_IN.labels(name, cloud).inc(self._counted[1])
            metrics.LAST_EVENT.labels(name).set(time.time())
        return pending, []

    async def _write(
        self, deliveries: list[Delivery], dead_lettered: set[int]
    ) -> list[asyncio.Future[Any]]:
        """Map and add every delivery's events to the writer, then flush it. A delivery
        that cannot be mapped goes to the DLQ, or to the source's own dead-letter queue."""
        for delivery in deliveries:
            try:
                events = to_cloudevents(delivery)
            except BadMessage as exc:
                if isinstance(self._source, DeadLettering):
                    log.warning(
                        "%s: message %s dead-lettered: %s",
                        self._source.name,
                        delivery.message_id,
                        exc,
                    )
                    await self._source.dead_letter(delivery, str(exc))
                    dead_lettered.add(id(delivery))
                else:
                    await self._add_dlq(delivery, str(exc))
                continue
            try:
                self._counted[1] += len(delivery.body)
                for event in events:
                    self._counted[0] += 1
                    headers, value = to_kafka(event)
                    key = delivery.key or event.extensions.get("partitionkey") or event.subject
                    await self._writer.add(
                        self._topics.events,
                        value,
                        key=key.encode() if key else None,
                        headers=headers,
                    )
            except RecordTooLarge as exc:  # it would be refused forever: the DLQ, then ack
                await self._add_dlq(delivery, f"event too large for Kafka: {exc}")
        return await self._writer.flush()

    async def _add_dlq(self, delivery: Delivery, reason: str) -> None:
        origin = {
            "bridge": delivery.kind,
            "source": self._source.name,
            "message_id": delivery.message_id,
        }
        log.warning(
            "%s: message %s sent to DLQ: %s", self._source.name, delivery.message_id, reason
        )
        metrics.DLQ_RECORDS.labels("bridge").inc()
        redrive = {"to": "bridge", "kind": delivery.kind, "message_id": delivery.message_id}
        entry = dlq_record(reason, origin, delivery.body, redrive=redrive)
        await self._writer.add(self._topics.dlq, entry)


#: The cloud of each bridge kind, for the metrics' ``cloud`` label.
CLOUDS = {
    "sqs": "aws",
    "pubsub": "gcp",
    "servicebus": "azure",
    "webhook": "http",
    "filedrop": "local",
}


def _failed(exc: BaseException) -> asyncio.Future[Any]:
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    future.set_exception(exc)
    return future
