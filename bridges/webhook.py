"""Webhook source: HTTP ingress for CloudEvents (binary and structured mode) and plain JSON.

A request is answered ``202`` only after Kafka acknowledged its event; ``503`` when the
write failed or did not finish within ``reply_timeout`` (Kafka unavailable: the sender
retries), ``429`` when the intake queue is full (backpressure), ``401`` on a missing or
wrong bearer token, ``413`` above ``max_bytes``, ``400`` naming what is wrong with the event.
Bad input is refused at the door, so nothing malformed reaches the log or the DLQ.

Modes: ``ce-*`` headers = binary mode; ``Content-Type: application/cloudevents+json`` =
structured mode; any other JSON object = ``type: headwater.webhook.received`` whose id is
the ``Idempotency-Key`` header when given (so a client's retry maps to the same event).
The bearer token is a secret reference (``${env:NAME}``/``${file:/path}``).
"""

from __future__ import annotations

import asyncio
import hmac
import uuid
from collections.abc import Sequence

from aiohttp import web

from headwater.bridges.base import Delivery, take_batch
from headwater.bridges.mapping import json_body, mapper, plain_event, to_cloudevents
from headwater.runner.envelope import CloudEvent, from_binary, now_iso
from headwater.runner.errors import BadMessage, NotConnected
from headwater.runner.secrets import resolve_reference

KIND = "webhook"
STRUCTURED = "application/cloudevents+json"


class WebhookSource:
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8080,
        *,
        path: str = "/events",
        token: str | None = None,
        max_bytes: int = 1 << 20,
        queue_size: int = 1000,
        reply_timeout: float = 30.0,
        wait: float = 1.0,
    ) -> None:
        self.host, self.port, self.path = host, port, path
        self._token = resolve_reference(token).encode() if token else None
        self._max_bytes = max_bytes
        self._queue: asyncio.Queue[Delivery] = asyncio.Queue(queue_size)
        self._reply_timeout = reply_timeout
        self._wait = wait
        self._runner: web.AppRunner | None = None

    @property
    def name(self) -> str:
        return f"http://{self.host}:{self.port}{self.path}"

    async def connect(self) -> None:
        app = web.Application(client_max_size=self._max_bytes)
        app.router.add_post(self.path, self._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port).start()
        except OSError as exc:
            await runner.cleanup()
            raise NotConnected(f"cannot listen on {self.host}:{self.port}: {exc}") from exc
        self._runner = runner

    async def close(self) -> None:
        while not self._queue.empty():  # release requests nobody will forward now
            _settle(self._queue.get_nowait(), False)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def receive(self, max_messages: int) -> list[Delivery]:
        batch = await take_batch(self._queue, max_messages, self._wait)
        return batch

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        for delivery in deliveries:
            _settle(delivery, True)

    async def nack(self, deliveries: Sequence[Delivery]) -> None:
        for delivery in deliveries:
            _settle(delivery, False)

    async def _handle(self, request: web.Request) -> web.Response:
        if self._token is not None and not self._authorized(request):
            return _reply(401, "missing or wrong bearer token")
        if request.content_length is not None and request.content_length > self._max_bytes:
            return _reply(413, f"body is larger than {self._max_bytes} bytes")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _reply(413, f"body is larger than {self._max_bytes} bytes")
        delivery = Delivery(
            kind=KIND,
            message_id=request.headers.get("Idempotency-Key") or str(uuid.uuid4()),
            body=body,
            attributes={k.lower(): v for k, v in request.headers.items()},
            handle=asyncio.get_running_loop().create_future(),
            origin=self.name,
        )
        try:
            events = to_cloudevents(delivery)  # refuse bad input now, with the reason
        except BadMessage as exc:
            return _reply(400, str(exc))
        try:
            self._queue.put_nowait(delivery)
        except asyncio.QueueFull:
            return _reply(429, "intake queue is full; retry later", {"Retry-After": "1"})
        try:
            written = await asyncio.wait_for(asyncio.shield(delivery.handle), self._reply_timeout)
        except TimeoutError:
            written = False
        if not written:
            return _reply(
                503, "the event could not be written to Kafka; retry later", {"Retry-After": "5"}
            )
        return web.json_response({"id": events[0].id}, status=202)

    def _authorized(self, request: web.Request) -> bool:
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        assert self._token is not None
        return scheme.lower() == "bearer" and hmac.compare_digest(credentials.encode(), self._token)


def _settle(delivery: Delivery, written: bool) -> None:
    future: asyncio.Future[bool] = delivery.handle
    if not future.done():
        future.set_result(written)


def _reply(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


@mapper(KIND)
def map_request(delivery: Delivery) -> list[CloudEvent]:
    headers = delivery.attributes
    content_type = headers.get("content-type", "")
    if "ce-specversion" in headers:
        return [from_binary(headers, delivery.body, "ce-")]
    body = json_body(delivery)
    if content_type.startswith(STRUCTURED):
        return [CloudEvent.from_dict(body)]
    if not isinstance(body, dict):
        raise BadMessage(f"a plain JSON body must be an object, not {type(body).__name__}")
    source = delivery.origin or "/webhook"
    # data is the body itself, not {message, attributes}: the headers are HTTP's own
    return [
        plain_event(
            delivery, "headwater.webhook.received", source, body, wrap=False, time=now_iso()
        )
    ]
