"""AMQP 1.0 message surgery for the Service Bus test server, on python-qpid-proton's ``Data``.

Job: split an encoded AMQP message into its sections, unpack the SDK's batch envelope, and
re-encode a stored message for delivery with a fresh header (delivery count) and the
broker's ``x-opt-*`` message annotations.  Also adds application properties (dead-letter
reason) to a stored message.

Invariants:
- The bare message (properties, application properties, body, footer) is kept byte for byte
  as the sender encoded it; only the header and message annotations are rebuilt, and
  delivery annotations (per hop) are dropped.  So ids, subject, content type, application
  properties and body reach the receiver exactly as sent.
- Nothing returned here refers to proton's C buffers (``Data.get_binary`` returns a
  ``memoryview`` into them): every value handed out is plain ``bytes``.

Batch detection: ``azure-servicebus`` sends a batch as ONE transfer with message format
0x80013700 whose body is one ``data`` section per message, each holding a complete encoded
AMQP message.  proton does not expose the transfer's message format, so a message counts as
a batch when it has only ``data`` body sections and every one of them parses, to its last
byte, as an AMQP message with a body.  A single message whose payload is itself an encoded
AMQP message would be unpacked by mistake; nothing in headwater sends such payloads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from proton import Data, Described, symbol, ubyte, uint, ulong

HEADER = 0x70
DELIVERY_ANNOTATIONS = 0x71
MESSAGE_ANNOTATIONS = 0x72
PROPERTIES = 0x73
APPLICATION_PROPERTIES = 0x74
DATA = 0x75
AMQP_SEQUENCE = 0x76
AMQP_VALUE = 0x77
FOOTER = 0x78
BODY = (DATA, AMQP_SEQUENCE, AMQP_VALUE)
_SYMBOLIC = {
    "amqp:header:list": HEADER,
    "amqp:delivery-annotations:map": DELIVERY_ANNOTATIONS,
    "amqp:message-annotations:map": MESSAGE_ANNOTATIONS,
    "amqp:properties:list": PROPERTIES,
    "amqp:application-properties:map": APPLICATION_PROPERTIES,
    "amqp:data:binary": DATA,
    "amqp:amqp-sequence:list": AMQP_SEQUENCE,
    "amqp:amqp-value:*": AMQP_VALUE,
    "amqp:footer:map": FOOTER,
}


class CodecError(ValueError):
    """The bytes are not an AMQP 1.0 message."""


@dataclass(frozen=True)
class Section:
    code: int  # the section's descriptor, e.g. DATA
    raw: bytes  # the whole encoded section, descriptor included


@dataclass(frozen=True)
class Parsed:
    """An incoming message taken apart: what the broker keeps of it."""

    header: tuple[Any, ...]  # durable, priority, ttl, first-acquirer (delivery count dropped)
    annotations: bytes  # the encoded message-annotations section, or b""
    bare: bytes  # properties .. footer, as sent


def _descriptor(data: Data) -> int:
    """The section code of the described value ``data`` was just positioned on."""
    if data.type() != Data.DESCRIBED:
        raise CodecError("section is not a described value")
    data.enter()
    data.next()
    kind = data.type()
    if kind == Data.ULONG:
        code = int(data.get_ulong())
    elif kind == Data.SYMBOL:
        code = _SYMBOLIC.get(str(data.get_symbol()), -1)
    else:
        code = -1
    data.exit()
    if not HEADER <= code <= FOOTER:
        raise CodecError(f"not a message section (descriptor {code:#x})")
    return code


def split(raw: bytes) -> list[Section]:
    """The sections of an encoded message, in order."""
    sections: list[Section] = []
    view = memoryview(raw)
    offset = 0
    while offset < len(raw):
        data = Data()
        try:
            used = data.decode(bytes(view[offset:]))
        except Exception as exc:  # proton raises DataException and friends
            raise CodecError(str(exc)) from exc
        if used <= 0:
            raise CodecError("undecodable section")
        data.rewind()
        data.next()
        sections.append(Section(_descriptor(data), bytes(view[offset : offset + used])))
        offset += used
    return sections


def _section_value(section: Section) -> Any:
    """The decoded value inside a section (copies binary out of proton's buffers)."""
    data = Data()
    data.decode(section.raw)
    data.rewind()
    data.next()
    data.enter()
    data.next()  # descriptor
    data.next()  # value
    return _detach(data.get_object())


def _detach(value: Any) -> Any:
    """``value`` with every binary copied out of proton's buffer (maps, lists, described)."""
    if isinstance(value, memoryview):
        return bytes(value)
    if isinstance(value, dict):
        return {_detach(k): _detach(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_detach(v) for v in value]
    if isinstance(value, Described):
        return Described(_detach(value.descriptor), _detach(value.value))
    return value


def _encode(descriptor: int, value: Any) -> bytes:
    data = Data()
    data.put_object(Described(ulong(descriptor), value))
    return bytes(data.encode())


def unbatch(raw: bytes) -> list[bytes]:
    """The messages inside an SDK batch envelope, or ``[raw]`` for a single message."""
    sections = split(raw)
    bodies = [s for s in sections if s.code in BODY]
    if not bodies or any(s.code != DATA for s in bodies):
        return [raw]
    inner = [_section_value(s) for s in bodies]
    for payload in inner:
        try:
            parts = split(payload)
        except CodecError:
            return [raw]
        if not any(p.code in BODY for p in parts):
            return [raw]
    return inner


def parse(raw: bytes) -> Parsed:
    """Keep the header fields, the message annotations and the bare message."""
    header: tuple[Any, ...] = (None, None, None, None)
    annotations = b""
    bare: list[bytes] = []
    for section in split(raw):
        if section.code == HEADER:
            fields = list(_section_value(section) or [])
            header = tuple((fields + [None] * 4)[:4])
        elif section.code == MESSAGE_ANNOTATIONS:
            annotations = section.raw
        elif section.code >= PROPERTIES:
            bare.append(section.raw)
    return Parsed(header, annotations, b"".join(bare))


def encode(parsed: Parsed, delivery_count: int, annotations: dict[str, Any]) -> bytes:
    """The message to put on the wire: header with ``delivery_count``, the sender's message
    annotations overlaid with ``annotations`` (keys become symbols), then the bare message."""
    durable, priority, ttl, first_acquirer = parsed.header
    header = _encode(
        HEADER,
        [
            durable,
            ubyte(int(priority)) if priority is not None else None,
            uint(int(ttl)) if ttl is not None else None,
            first_acquirer,
            uint(delivery_count),
        ],
    )
    merged: dict[Any, Any] = {}
    if parsed.annotations:
        merged.update(_section_value(Section(MESSAGE_ANNOTATIONS, parsed.annotations)) or {})
    merged.update({symbol(key): value for key, value in annotations.items()})
    return header + _encode(MESSAGE_ANNOTATIONS, merged) + parsed.bare


def with_application_properties(parsed: Parsed, extra: dict[str, str]) -> Parsed:
    """A copy of ``parsed`` whose application properties also hold ``extra``."""
    sections = split(parsed.bare) if parsed.bare else []
    merged: dict[Any, Any] = {}
    for section in sections:
        if section.code == APPLICATION_PROPERTIES:
            merged.update(_section_value(section) or {})
    merged.update(extra)
    props = _encode(APPLICATION_PROPERTIES, merged)
    before = b"".join(s.raw for s in sections if s.code == PROPERTIES)
    after = b"".join(s.raw for s in sections if s.code > APPLICATION_PROPERTIES)
    return Parsed(parsed.header, parsed.annotations, before + props + after)
