"""Request/response nodes of the Service Bus test server: ``$cbs`` and ``ENTITY/$management``.

Job: turn one request message into one response message.  The AMQP plumbing (which link
the request came on, which link the answer goes back on) lives in ``server.py``.

Invariants:
- Every response carries ``correlation_id`` = the request's ``message_id`` (the SDK matches
  responses on it) and a status code: ``status-code`` for CBS, ``statusCode`` (plus
  ``statusDescription``, and ``errorCondition`` on failure) for ``$management``.
- CBS accepts any token: the server does no authentication.
- Times on the wire are AMQP timestamps (milliseconds since the epoch).
- Unsupported operations answer 501 with ``com.microsoft:not-implemented``, never silence
  (silence would leave the SDK waiting for its timeout).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from proton import UNDESCRIBED, Array, Data, Message, symbol, timestamp

from tests.servers.servicebus import codec
from tests.servers.servicebus.broker import Broker, Lock, LockLost, Outcome, Stored

LOCK_LOST = "com.microsoft:message-lock-lost"
NOT_IMPLEMENTED = "com.microsoft:not-implemented"
BAD_REQUEST = "com.microsoft:argument-error"
DISPOSITIONS = {
    "completed": Outcome.COMPLETE,
    "abandoned": Outcome.ABANDON,
    "suspended": Outcome.DEAD_LETTER,
}


def millis(seconds: float) -> timestamp:
    return timestamp(round(seconds * 1000))


def wire_annotations(stored: Stored, lock: Lock | None) -> dict[str, Any]:
    """The broker-owned message annotations the SDK reads off a received message."""
    annotations: dict[str, Any] = {
        "x-opt-sequence-number": stored.sequence_number,  # long
        "x-opt-enqueued-time": millis(stored.enqueued_at),
    }
    if lock is not None:
        annotations["x-opt-lock-token"] = lock.token
        annotations["x-opt-locked-until"] = millis(lock.until)
    return annotations


def cbs_response(request: Message) -> Message:
    """put-token always succeeds."""
    return Message(
        correlation_id=request.id,
        properties={"status-code": 200, "status-description": "OK"},
    )


def _response(
    request: Message,
    status: int,
    body: Any = None,
    condition: str | None = None,
    description: str = "",
) -> Message:
    properties: dict[str, Any] = {"statusCode": status, "statusDescription": description}
    if condition:
        properties["errorCondition"] = symbol(condition)
    return Message(correlation_id=request.id, properties=properties, body=body)


def _tokens(value: Any) -> list[uuid.UUID]:
    items: Iterable[Any] = value.elements if isinstance(value, Array) else (value or [])
    return [item if isinstance(item, uuid.UUID) else uuid.UUID(str(item)) for item in items]


def management_response(broker: Broker, entity: str, request: Message) -> Message:
    """Answer one ``$management`` request for ``entity`` (an entity path)."""
    properties: dict[Any, Any] = request.properties or {}
    operation = str(properties.get("operation", ""))
    body: dict[Any, Any] = request.body if isinstance(request.body, dict) else {}
    try:
        if operation == "com.microsoft:renew-lock":
            expirations = [millis(broker.renew(token)) for token in _tokens(body["lock-tokens"])]
            stamps = Array(UNDESCRIBED, Data.TIMESTAMP, *expirations)  # type: ignore[arg-type]
            return _response(request, 200, {"expirations": stamps})
        if operation == "com.microsoft:peek-message":
            found = broker.peek(
                entity, int(body.get("from-sequence-number", 0)), int(body["message-count"])
            )
            if not found:
                return _response(request, 204, description="No messages")
            messages = [
                {"message": codec.encode(s.message, s.delivery_count, wire_annotations(s, None))}
                for s in found
            ]
            return _response(request, 200, {"messages": messages})
        if operation == "com.microsoft:update-disposition":
            outcome = DISPOSITIONS.get(str(body.get("disposition-status")))
            if outcome is None:
                return _response(
                    request,
                    501,
                    condition=NOT_IMPLEMENTED,
                    description="only completed, abandoned and suspended",
                )
            for token in _tokens(body["lock-tokens"]):
                broker.settle(
                    token,
                    outcome,
                    body.get("deadletter-reason") or None,
                    body.get("deadletter-description") or None,
                )
            return _response(request, 200, {})
    except LockLost as exc:
        return _response(request, 410, condition=LOCK_LOST, description=str(exc))
    except (KeyError, TypeError, ValueError) as exc:
        return _response(request, 400, condition=BAD_REQUEST, description=repr(exc))
    return _response(
        request,
        501,
        condition=NOT_IMPLEMENTED,
        description=f"{operation!r} is not implemented by the test server",
    )
