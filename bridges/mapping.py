"""Native message -> CloudEvents, in one place.

Each bridge module registers a mapper for its delivery ``kind`` (``@mapper("sqs")``);
``to_cloudevents`` looks the mapper up and stamps headwater's extension attributes
(``hwbridge``, ``hwmsgid``). A mapper returns the events made from one delivery (none for
a message to skip, such as S3's test event) or raises ``BadMessage`` with the reason.

Shared here: a message that already is a CloudEvent (structured JSON, or binary mode with
``ce-*`` headers/attributes, read by ``envelope.from_binary``) is taken as it is; any other
message becomes the bridge's own event, or the plain one of ``plain_event``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from headwater.bridges.base import Delivery
from headwater.runner.envelope import CloudEvent
from headwater.runner.errors import BadMessage

Mapper = Callable[[Delivery], list[CloudEvent]]
_MAPPERS: dict[str, Mapper] = {}


def mapper(kind: str) -> Callable[[Mapper], Mapper]:
    """Register the mapper of one delivery kind."""

    def register(function: Mapper) -> Mapper:
        if kind in _MAPPERS:
            raise ValueError(f"a mapper for {kind!r} is registered already")
        _MAPPERS[kind] = function
        return function

    return register


def to_cloudevents(delivery: Delivery) -> list[CloudEvent]:
    """The CloudEvents made from one delivery; ``BadMessage`` if it cannot make any."""
    function = _MAPPERS.get(delivery.kind)
    if function is None:
        raise BadMessage(f"no mapper registered for deliveries of kind {delivery.kind!r}")
    events = function(delivery)
    for event in events:
        event.extensions.setdefault("hwbridge", delivery.kind)
        event.extensions.setdefault("hwmsgid", delivery.message_id)
    return events


def json_body(delivery: Delivery) -> Any:
    """The delivery's body parsed as JSON, or ``BadMessage`` saying why not."""
    try:
        return orjson.loads(delivery.body)
    except orjson.JSONDecodeError as exc:
        raise BadMessage(f"message body is not valid JSON ({exc})") from None


def is_structured_cloudevent(obj: Any) -> bool:
    return isinstance(obj, dict) and "specversion" in obj


def plain_event(
    delivery: Delivery,
    event_type: str,
    source: str,
    message: Any,
    *,
    wrap: bool = True,
    time: str | None = None,
    subject: str | None = None,
) -> CloudEvent:
    """The event of a message that is not a CloudEvent: its id is the source message's id,
    its time when the service accepted the message (unless ``time``), its data
    ``{message, attributes}`` (the body and the message's attributes), or the message
    itself when ``wrap`` is false (the webhook, the drop folder)."""
    return CloudEvent(
        id=delivery.message_id,
        source=source,
        type=event_type,
        subject=subject,
        time=delivery.time if time is None else time,
        data={"message": message, "attributes": delivery.attributes} if wrap else message,
    )
