"""Google Pub/Sub bridge (google-cloud-pubsub's asyncio GAPIC client): streaming pull.

One StreamingPull stream per subscription with server-side flow control
(``max_outstanding_messages``): the server stops sending when that many messages are
unacked, so memory stays bounded while Kafka is slow. A message is acknowledged (unary
``Acknowledge``, whose success is confirmed) only after Kafka acknowledged its event;
a failed write is nacked (ack deadline set to 0) for redelivery; a message never
settled (process killed) is redelivered when its ack deadline passes. The ordering key
becomes the Kafka key, so per-key order survives into the log. ``PUBSUB_EMULATOR_HOST``
points the client at an emulator (plain gRPC, no credentials).

Mapping: GCS notifications (attributes ``eventType``, ``bucketId``, ``objectId``,
``payloadFormat=JSON_API_V1``) become ``google.cloud.storage.object.finalized`` (and
``.deleted``/``.archived``/``.metadata_updated``) with ``subject: gs://bucket/object`` and
an id derived from bucket, object, generation and event type; a structured CloudEvent body
or ``ce-*`` attributes (the CloudEvents Pub/Sub binding) are taken as they are; any other
message becomes ``google.pubsub.message.published`` with ``data: {message, attributes}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
import orjson
from google.api_core import exceptions as google_errors
from google.auth import exceptions as google_auth_errors
from google.pubsub_v1.services.subscriber import SubscriberAsyncClient
from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcAsyncIOTransport
from google.pubsub_v1.types import StreamingPullRequest

from headwater.bridges.base import Delivery, take_batch
from headwater.bridges.mapping import mapper, plain_event
from headwater.runner.envelope import CloudEvent, from_binary, rfc3339
from headwater.runner.errors import BadMessage, NotConnected

log = logging.getLogger(__name__)
KIND = "pubsub"
_GCS_TYPES = {
    "OBJECT_FINALIZE": "google.cloud.storage.object.finalized",
    "OBJECT_DELETE": "google.cloud.storage.object.deleted",
    "OBJECT_ARCHIVE": "google.cloud.storage.object.archived",
    "OBJECT_METADATA_UPDATE": "google.cloud.storage.object.metadata_updated",
}
_ID_NAMESPACE = uuid.UUID("9d1c7f1e-5b7a-4e0f-8a1d-3f6b2c8e4a90")
#: every error of the SDK (refusals such as PermissionDenied included), wrapped once here
#: into ``NotConnected`` so that the pump reconnects with backoff
_SDK_ERRORS = (
    google_errors.GoogleAPIError,
    google_auth_errors.GoogleAuthError,
    grpc.RpcError,
    OSError,
)


class PubSubSource:
    def __init__(
        self,
        subscription: str,
        *,
        max_outstanding: int = 1000,
        ack_deadline: int = 15,
        wait: float = 1.0,
    ) -> None:
        if not subscription.startswith("projects/") or "/subscriptions/" not in subscription:
            raise ValueError("subscription must be projects/PROJECT/subscriptions/NAME")
        self.subscription = subscription
        self._max_outstanding = max_outstanding
        self._ack_deadline = ack_deadline
        self._wait = wait
        self._client: SubscriberAsyncClient | None = None
        self._buffer: asyncio.Queue[Any] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        self._stop = asyncio.Event()

    @property
    def name(self) -> str:
        return self.subscription

    async def connect(self) -> None:
        self._failure = None
        self._stop = asyncio.Event()
        try:  # fail fast on a missing subscription, missing credentials or no server
            self._client = _client()
            await self._client.get_subscription(
                subscription=self.subscription, retry=None, timeout=10
            )
        except _SDK_ERRORS as exc:
            raise NotConnected(f"Pub/Sub {self.subscription}: {exc}") from exc
        self._reader = asyncio.create_task(self._read_stream())

    async def close(self) -> None:
        self._stop.set()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        unsettled = []
        while not self._buffer.empty():
            unsettled.append(self._buffer.get_nowait())
        if unsettled and self._client is not None:  # give them back now, not at deadline
            with contextlib.suppress(*_SDK_ERRORS):
                await self._client.modify_ack_deadline(
                    subscription=self.subscription,
                    ack_ids=[m.ack_id for m in unsettled],
                    ack_deadline_seconds=0,
                    timeout=5,
                )
        self._reader, self._client = None, None

    async def _requests(self) -> AsyncIterator[StreamingPullRequest]:
        yield StreamingPullRequest(
            subscription=self.subscription,
            stream_ack_deadline_seconds=self._ack_deadline,
            max_outstanding_messages=self._max_outstanding,
            client_id=str(uuid.uuid4()),
        )
        await self._stop.wait()  # acks go through the unary RPC; keep the stream open

    async def _read_stream(self) -> None:
        assert self._client is not None
        try:
            stream = await self._client.streaming_pull(requests=self._requests())
            async for response in stream:
                for received in response.received_messages:
                    self._buffer.put_nowait(received)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - handed to receive() as NotConnected
            self._failure = exc
        else:
            self._failure = NotConnected("streaming pull ended")

    async def receive(self, max_messages: int) -> list[Delivery]:
        if self._failure is not None:
            raise NotConnected(f"Pub/Sub {self.subscription}: {self._failure}")
        batch = await take_batch(self._buffer, max_messages, self._wait)
        return [self._delivery(received) for received in batch]

    def _delivery(self, received: Any) -> Delivery:
        message = received.message
        return Delivery(
            kind=KIND,
            message_id=message.message_id,
            body=bytes(message.data),
            handle=received.ack_id,
            attributes=dict(message.attributes),
            key=message.ordering_key or None,
            origin=self.subscription,
            time=rfc3339(message.publish_time) if message.publish_time else None,
        )

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        await self._settle(deliveries, acknowledge=True)

    async def nack(self, deliveries: Sequence[Delivery]) -> None:
        await self._settle(deliveries, acknowledge=False)

    async def _settle(self, deliveries: Sequence[Delivery], *, acknowledge: bool) -> None:
        assert self._client is not None
        ack_ids = [d.handle for d in deliveries]
        try:
            if acknowledge:
                await self._client.acknowledge(
                    subscription=self.subscription, ack_ids=ack_ids, timeout=30
                )
            else:
                await self._client.modify_ack_deadline(
                    subscription=self.subscription,
                    ack_ids=ack_ids,
                    ack_deadline_seconds=0,
                    timeout=30,
                )
        except _SDK_ERRORS as exc:
            raise NotConnected(f"Pub/Sub {self.subscription}: {exc}") from exc


def _client() -> SubscriberAsyncClient:
    emulator = os.environ.get("PUBSUB_EMULATOR_HOST")
    if emulator:
        channel = grpc.aio.insecure_channel(emulator)
        return SubscriberAsyncClient(transport=SubscriberGrpcAsyncIOTransport(channel=channel))
    return SubscriberAsyncClient()


@mapper(KIND)
def map_pubsub(delivery: Delivery) -> list[CloudEvent]:
    attributes = delivery.attributes
    if attributes.get("eventType") in _GCS_TYPES and "bucketId" in attributes:
        return [gcs_event(delivery)]
    if "ce-specversion" in attributes:
        return [from_binary(attributes, delivery.body, "ce-")]
    body = _parse(delivery.body)
    if isinstance(body, dict) and "specversion" in body:
        return [CloudEvent.from_dict(body)]
    source = f"//pubsub.googleapis.com/{delivery.origin}"
    return [plain_event(delivery, "google.pubsub.message.published", source, body)]


def gcs_event(delivery: Delivery) -> CloudEvent:
    """A Cloud Storage notification (JSON_API_V1) as a CloudEvent."""
    attributes = delivery.attributes
    bucket, name = attributes["bucketId"], attributes.get("objectId")
    if not name:
        raise BadMessage("GCS notification has no objectId attribute")
    if attributes.get("payloadFormat", "JSON_API_V1") != "JSON_API_V1":
        raise BadMessage(
            f"GCS notification payloadFormat {attributes['payloadFormat']!r} "
            "is not supported (use JSON_API_V1)"
        )
    resource = _parse(delivery.body)
    if not isinstance(resource, dict):
        raise BadMessage("GCS notification body is not a JSON object resource")
    generation = attributes.get("objectGeneration") or resource.get("generation") or ""
    event_type = attributes["eventType"]
    identity = f"{event_type}\x00{bucket}\x00{name}\x00{generation}"
    size = resource.get("size")
    return CloudEvent(
        id=str(uuid.uuid5(_ID_NAMESPACE, identity)),
        source=f"//storage.googleapis.com/projects/_/buckets/{bucket}",
        type=_GCS_TYPES[event_type],
        subject=f"gs://{bucket}/{name}",
        time=attributes.get("eventTime") or resource.get("updated"),
        data={
            "bucket": bucket,
            "name": name,
            "size": int(size) if isinstance(size, str) and size.isdigit() else size,
            "generation": generation,
            "md5_hash": resource.get("md5Hash"),
            "content_type": resource.get("contentType"),
            "notification": {"attributes": attributes, "resource": resource},
        },
    )


def _parse(body: bytes) -> Any:
    """JSON when it is JSON, text when it is UTF-8; binary payloads are refused."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            raise BadMessage("message data is neither JSON nor UTF-8 text") from None
