"""Azure Service Bus bridge (azure-servicebus, asyncio): peek-lock receive in batches.

A message is completed only after Kafka acknowledged its event; abandoned (delivery count
+ 1, redelivered) when the write failed; dead-lettered at the source, with the reason, when
it cannot be mapped. While a batch waits for Kafka its locks are renewed, so a slow write
does not hand the message to another receiver. A lock lost anyway (the process stalled)
only means the message is delivered again: at least once, deduplicated by run id.

Entities: a queue (``orders``) or a topic subscription (``blobs/subscriptions/headwater``).
The connection string is a secret reference (``${env:NAME}``/``${file:/path}``).

Mapping: Blob-created events in Event Grid schema (``eventType``
``Microsoft.Storage.BlobCreated``, alone or in a JSON array) and in CloudEvents schema
(``type`` ``Microsoft.Storage.BlobCreated``) become ``azure.storage.blob.created`` with
``subject`` the blob URL; other structured CloudEvents are taken as they are; any other
JSON object becomes ``azure.servicebus.message`` with ``data: {message, attributes}`` (the
body and the application properties).
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Sequence
from typing import Any

from azure.core.exceptions import AzureError
from azure.servicebus import ServiceBusReceivedMessage, ServiceBusReceiveMode
from azure.servicebus.aio import AutoLockRenewer, ServiceBusClient, ServiceBusReceiver
from azure.servicebus.exceptions import MessageAlreadySettled, MessageLockLostError

from headwater.bridges.base import Delivery
from headwater.bridges.mapping import json_body, mapper, plain_event
from headwater.runner.envelope import CloudEvent, rfc3339
from headwater.runner.errors import BadMessage, ConfigError, NotConnected
from headwater.runner.secrets import resolve_reference

log = logging.getLogger(__name__)
KIND = "servicebus"
BLOB_CREATED = "Microsoft.Storage.BlobCreated"
_ID_NAMESPACE = uuid.UUID("c4b1d7e2-0f3a-4b6c-9d8e-1a2b3c4d5e6f")


class ServiceBusSource:
    def __init__(
        self,
        entity: str,
        *,
        connection: str,
        wait: float = 1.0,
        lock_renewal: float = 300.0,
    ) -> None:
        self.entity = entity
        self._connection = connection  # a secret reference; resolved on connect
        self._wait = wait
        self._lock_renewal = lock_renewal
        self._client: ServiceBusClient | None = None
        self._receiver: ServiceBusReceiver | None = None
        self._renewer: AutoLockRenewer | None = None
        self._messages: dict[int, ServiceBusReceivedMessage] = {}

    @property
    def name(self) -> str:
        return f"servicebus:{self.entity}"

    async def connect(self) -> None:
        try:
            client = ServiceBusClient.from_connection_string(resolve_reference(self._connection))
        except ValueError:  # the SDK's message is kept out: it may quote the secret
            raise ConfigError(f"Service Bus {self.entity}: malformed connection string") from None
        renewer = AutoLockRenewer(max_lock_renewal_duration=self._lock_renewal)
        topic, _, subscription = self.entity.partition("/subscriptions/")
        options: dict[str, Any] = {
            "receive_mode": ServiceBusReceiveMode.PEEK_LOCK,
            "auto_lock_renewer": renewer,
        }
        if subscription:
            receiver = client.get_subscription_receiver(topic, subscription, **options)
        else:
            receiver = client.get_queue_receiver(self.entity, **options)
        try:
            await receiver.__aenter__()
        except (AzureError, OSError) as exc:
            await client.close()
            raise NotConnected(f"Service Bus {self.entity}: {exc}") from exc
        self._client, self._receiver, self._renewer = client, receiver, renewer

    async def close(self) -> None:
        # Unsettled messages are released by closing the link (their locks lapse).
        self._messages.clear()
        for closable in (self._renewer, self._receiver, self._client):
            if closable is not None:
                with contextlib.suppress(Exception):
                    await closable.close()
        self._client, self._receiver, self._renewer = None, None, None

    async def receive(self, max_messages: int) -> list[Delivery]:
        assert self._receiver is not None
        try:
            messages = await self._receiver.receive_messages(
                max_message_count=max_messages, max_wait_time=self._wait
            )
        except (AzureError, OSError) as exc:
            raise NotConnected(f"Service Bus {self.entity}: {exc}") from exc
        return [self._delivery(message) for message in messages]

    def _delivery(self, message: ServiceBusReceivedMessage) -> Delivery:
        self._messages[id(message)] = message
        properties = {_text(k): _text(v) for k, v in (message.application_properties or {}).items()}
        return Delivery(
            kind=KIND,
            message_id=str(message.message_id),
            body=b"".join(_bytes(section) for section in message.body),
            handle=id(message),
            attributes=properties,
            key=message.session_id or message.partition_key or None,
            origin=self.name,
            time=rfc3339(message.enqueued_time_utc) if message.enqueued_time_utc else None,
        )

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        await self._settle(deliveries, "complete_message")

    async def nack(self, deliveries: Sequence[Delivery]) -> None:
        await self._settle(deliveries, "abandon_message")

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        await self._settle(
            [delivery],
            "dead_letter_message",
            reason="MalformedMessage",
            error_description=reason[:1024],
        )

    async def _settle(self, deliveries: Sequence[Delivery], call: str, **kwargs: Any) -> None:
        assert self._receiver is not None
        for delivery in deliveries:
            message = self._messages.pop(delivery.handle, None)
            if message is None:
                continue
            try:
                await getattr(self._receiver, call)(message, **kwargs)
            except MessageLockLostError:
                log.warning(
                    "%s: lock lost on %s before %s; it will be delivered again",
                    self.entity,
                    delivery.message_id,
                    call,
                )
            except MessageAlreadySettled:  # a ValueError, not a ServiceBusError
                log.warning("%s: %s was settled already", self.entity, delivery.message_id)
            except (AzureError, OSError) as exc:
                raise NotConnected(f"Service Bus {self.entity}: {exc}") from exc


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _bytes(section: Any) -> bytes:
    return section if isinstance(section, bytes) else str(section).encode()


@mapper(KIND)
def map_servicebus(delivery: Delivery) -> list[CloudEvent]:
    body = json_body(delivery)
    if isinstance(body, list):
        if not body:
            raise BadMessage("message body is an empty JSON array")
        return [_one(item, delivery, f"[{i}]") for i, item in enumerate(body)]
    return [_one(body, delivery, "")]


def _one(body: Any, delivery: Delivery, where: str) -> CloudEvent:
    if not isinstance(body, dict):
        raise BadMessage(f"message body{where} must be a JSON object, not {type(body).__name__}")
    if body.get("eventType") == BLOB_CREATED:  # Event Grid schema
        return _blob_created(
            body,
            delivery,
            where,
            body.get("id"),
            body.get("eventTime"),
            body.get("subject"),
            body.get("topic"),
        )
    if "specversion" in body:  # CloudEvents schema
        if body.get("type") == BLOB_CREATED:
            return _blob_created(
                body,
                delivery,
                where,
                body.get("id"),
                body.get("time"),
                body.get("subject"),
                body.get("source"),
            )
        return CloudEvent.from_dict(body)
    return plain_event(delivery, "azure.servicebus.message", f"/servicebus/{delivery.origin}", body)


def _blob_created(
    body: dict[str, Any],
    delivery: Delivery,
    where: str,
    event_id: Any,
    time: Any,
    subject: Any,
    source: Any,
) -> CloudEvent:
    data = body.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("url"), str) or not data["url"]:
        raise BadMessage(f"BlobCreated event{where} has no data.url")
    identity = f"{data['url']}\x00{data.get('eTag', '')}\x00{event_id or ''}"
    return CloudEvent(
        id=str(event_id) if event_id else str(uuid.uuid5(_ID_NAMESPACE, identity)),
        source=str(source or "/azure/storage"),
        type="azure.storage.blob.created",
        subject=data["url"],
        time=str(time) if time else None,
        data={
            "url": data["url"],
            "container_path": subject,
            "size": data.get("contentLength"),
            "etag": data.get("eTag"),
            "content_type": data.get("contentType"),
            "api": data.get("api"),
            "notification": body,
        },
    )
