"""The event envelope: CloudEvents 1.0 in Kafka binary content mode, JSON data via orjson.

Every event on the central log is built and read here, so all bridges and the runner agree
on one shape. Binary mode puts attributes in ``ce_*`` headers and the data in the value,
which the official ``cloudevents`` SDK reads with ``from_kafka``; ``from_binary`` reads
binary mode from any text attributes (HTTP ``ce-*`` headers, Pub/Sub attributes), with the
same rules as ``from_kafka``. headwater's extension
attributes (see ``schemas/cloudevent.schema.json``):

- ``hwbridge``: the bridge that brought the event in (``sqs``, ``pubsub``, ...);
- ``hwmsgid``: the id of the source message it was made from (for tracing and the DLQ).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from headwater.runner.errors import BadMessage

SPECVERSION = "1.0"
JSON = "application/json"
_REQUIRED = ("id", "source", "type", "specversion")
_OPTIONAL = ("subject", "time", "datacontenttype", "dataschema")
_STRINGS = frozenset((*_REQUIRED, *_OPTIONAL))
_KNOWN = _STRINGS | {"data", "data_base64"}
_EXTENSION_NAME = re.compile(r"^[a-z0-9]{1,20}$")
Headers = list[tuple[str, bytes]]


@dataclass(slots=True)
class CloudEvent:
    """A CloudEvents 1.0 event whose data is JSON (or ``None``)."""

    id: str
    source: str
    type: str
    data: Any = None
    subject: str | None = None
    time: str | None = None
    datacontenttype: str | None = JSON
    dataschema: str | None = None
    extensions: dict[str, str] = field(default_factory=dict)
    specversion: str = SPECVERSION

    def attributes(self) -> dict[str, str]:
        """Context attributes (no data), as strings, ``None`` ones left out."""
        attrs = {
            "id": self.id,
            "source": self.source,
            "type": self.type,
            "specversion": self.specversion,
        }
        for name in _OPTIONAL:
            value = getattr(self, name)
            if value is not None:
                attrs[name] = value
        attrs.update(self.extensions)
        return attrs

    def to_dict(self) -> dict[str, Any]:
        """The structured-mode JSON object (attributes plus ``data``)."""
        out: dict[str, Any] = self.attributes()
        if self.data is not None:
            out["data"] = self.data
        return out

    @classmethod
    def from_dict(cls, obj: Any) -> CloudEvent:
        """Read a structured-mode object; raises ``BadMessage`` naming what is wrong."""
        if not isinstance(obj, dict):
            raise BadMessage(f"a CloudEvent must be a JSON object, not {type(obj).__name__}")
        missing = [name for name in _REQUIRED if not obj.get(name)]
        if missing:
            raise BadMessage(f"CloudEvent is missing required attribute(s): {', '.join(missing)}")
        if obj["specversion"] != SPECVERSION:
            raise BadMessage(f"unsupported CloudEvents specversion {obj['specversion']!r}")
        extensions = {}
        for name, value in obj.items():
            if name in _KNOWN:
                if name in _STRINGS and not isinstance(value, str):
                    raise BadMessage(f"CloudEvent attribute {name!r} must be a string")
            elif _EXTENSION_NAME.match(name):
                extensions[name] = str(value)
            else:
                raise BadMessage(f"CloudEvent attribute name {name!r} is not lowercase a-z0-9")
        return cls(
            id=obj["id"],
            source=obj["source"],
            type=obj["type"],
            data=obj.get("data"),
            subject=obj.get("subject"),
            time=obj.get("time"),
            datacontenttype=obj.get("datacontenttype", JSON if "data" in obj else None),
            dataschema=obj.get("dataschema"),
            extensions=extensions,
        )


def new_id() -> str:
    return str(uuid.uuid4())


def rfc3339(stamp: datetime) -> str:
    """``2026-11-25T10:00:00.123Z``: UTC with millisecond precision (naive = UTC)."""
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def epoch_iso(seconds: float) -> str:
    """``rfc3339`` of a Unix time, without building a ``datetime`` (hot path)."""
    whole = int(seconds)
    millis = int((seconds - whole) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{millis:03d}Z"


def now_iso() -> str:
    return rfc3339(datetime.now(UTC))


def to_kafka(event: CloudEvent) -> tuple[Headers, bytes]:
    """Binary content mode: ``ce_*`` headers and the JSON data as the value."""
    headers: Headers = []
    for name, text in event.attributes().items():
        if name == "datacontenttype":
            headers.append(("content-type", text.encode()))
        else:
            headers.append(("ce_" + name, text.encode()))
    return headers, b"" if event.data is None else orjson.dumps(event.data)


def from_kafka(headers: Any, value: bytes | None) -> CloudEvent:
    """Read binary or structured mode from a Kafka record's headers and value.

    Raises ``BadMessage`` with the reason when the record is not a valid CloudEvent. The
    router's hot path: the headers are scanned once, in place (no copy into a mapping
    first), and the event is assembled by the same ``_binary_event`` as ``from_binary``.
    """
    attrs: dict[str, Any] = {}
    content_type = None
    for name, raw in headers or ():
        lowered = name if name[:3] == "ce_" else name.lower()  # ce_ is the usual spelling
        if lowered[:3] == "ce_":
            attribute = lowered[3:]
            if attribute in attrs:
                raise BadMessage(f"header {name!r} appears more than once")
            attrs[attribute] = _header_text(name, raw)
        elif lowered == "content-type":
            content_type = _header_text(name, raw)
    if not attrs:  # structured mode: the whole event is the value
        return CloudEvent.from_dict(_loads(value, "structured CloudEvent"))
    return _binary_event(attrs, content_type, value)


def from_binary(attributes: Mapping[str, str], body: bytes | None, prefix: str) -> CloudEvent:
    """A CloudEvent in binary mode from text attributes: ``ce-*`` HTTP headers or Pub/Sub
    attributes (``prefix="ce-"``), or ``ce_*`` Kafka headers already decoded (``"ce_"``).

    The prefix is matched in any case and the attribute names are lowercased, as Kafka's
    are; ``content-type`` becomes ``datacontenttype``; ``BadMessage`` says what is wrong.
    """
    size = len(prefix)
    attrs: dict[str, Any] = {}
    content_type = None
    for name, text in attributes.items():
        lowered = name.lower()
        if lowered[:size] == prefix:
            attrs[lowered[size:]] = text
        elif lowered == "content-type":
            content_type = text
    return _binary_event(attrs, content_type, body)


def _binary_event(
    attrs: dict[str, Any], content_type: str | None, body: bytes | None
) -> CloudEvent:
    """The one reading of binary mode: attributes (prefix removed), the content type as
    ``datacontenttype``, the body as the data (JSON unless the content type says other)."""
    if content_type is not None:
        attrs["datacontenttype"] = content_type
    if body:
        if content_type is None or "json" in content_type:
            attrs["data"] = _loads(body, "event data")
        else:
            attrs["data"] = body.decode("utf-8", "replace")
    return CloudEvent.from_dict(attrs)


def _header_text(name: str, raw: Any) -> str:
    """A header's value as text; ``BadMessage`` for a null or non-UTF-8 one."""
    if raw is None:
        raise BadMessage(f"header {name!r} has no value (null)")
    try:
        return str(raw.decode("utf-8"))
    except (UnicodeDecodeError, AttributeError):
        raise BadMessage(f"header {name!r} is not UTF-8 text") from None


def _loads(value: bytes | None, what: str) -> Any:
    if not value:
        raise BadMessage(f"{what} is empty")
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise BadMessage(f"{what} is not valid JSON: {exc}") from None
