"""Every decoder of a record headwater reads is total: whatever bytes and headers arrive,
it returns a value or raises ``BadMessage`` naming what is wrong, nothing else (so a
poison record goes to the DLQ instead of stopping a stream). Property-based (Hypothesis)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.runner.envelope import CloudEvent, from_kafka, to_kafka
from headwater.runner.errors import BadMessage
from headwater.runner.log.records import (
    _KINDS,
    decode_control,
    decode_task_request,
    encode_control,
)
from headwater.runner.runs.store import MemoryKV, Store

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
header_names = st.sampled_from(
    [
        "ce_id",
        "ce_source",
        "ce_type",
        "ce_specversion",
        "ce_subject",
        "ce_time",
        "CE_ID",
        "content-type",
        "ce_hwbridge",
        "ce_Bad Name",
        "x-other",
    ]
) | st.text(max_size=12)
header_values = st.none() | st.binary(max_size=24) | st.text(max_size=24).map(str.encode)
headers = st.lists(st.tuples(header_names, header_values), max_size=8)
payloads = st.none() | st.binary(max_size=64) | json_values.map(orjson.dumps)


def total(decode: Any, *args: Any) -> Any:
    try:
        return decode(*args)
    except BadMessage as exc:
        assert str(exc), "a BadMessage says what is wrong"
        return None


@settings(max_examples=400, deadline=None)
@given(headers, payloads)
def test_from_kafka_returns_an_event_or_bad_message(hs: Any, value: bytes | None) -> None:
    event = total(from_kafka, hs, value)
    assert event is None or isinstance(event, CloudEvent)


@settings(max_examples=200, deadline=None)
@given(
    st.fixed_dictionaries(
        {"id": st.text(min_size=1), "source": st.text(min_size=1), "type": st.text(min_size=1)}
    ),
    json_values,
)
def test_a_valid_event_survives_binary_mode(attributes: dict[str, str], data: Any) -> None:
    event = CloudEvent(**attributes, data=data if data is not None else {})
    back = from_kafka(*to_kafka(event))
    assert (back.id, back.source, back.type, back.data) == (
        event.id,
        event.source,
        event.type,
        event.data,
    )


kinds = st.sampled_from([*sorted(_KINDS), "nope", ""]) | json_values
control_objects = st.dictionaries(
    st.sampled_from(
        [
            "run_id",
            "pipeline",
            "event",
            "task",
            "attempt",
            "ok",
            "output",
            "error",
            "started_at",
            "finished_at",
            "window",
            "trigger",
            "key",
            "events",
            "opened_at",
            "partition",
            "extra",
        ]
    ),
    json_values,
)


@settings(max_examples=600, deadline=None)
@given(kinds, control_objects)
def test_decode_control_returns_a_message_or_bad_message(kind: Any, obj: dict[str, Any]) -> None:
    message = total(decode_control, orjson.dumps({"kind": kind, **obj}))
    if message is not None:  # a decoded message has its declared types: it encodes again
        assert decode_control(encode_control(message)) == message


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64) | json_values.map(orjson.dumps))
def test_decode_control_on_any_bytes(value: bytes) -> None:
    total(decode_control, value)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["run_id", "pipeline", "task", "attempt", "event", "upstream"]),
        json_values,
    )
    | json_values
)
def test_decode_task_request_returns_a_request_or_bad_message(obj: Any) -> None:
    request = total(decode_task_request, orjson.dumps(obj))
    if request is not None:
        assert isinstance(request["run_id"], str) and isinstance(request["attempt"], int)
        assert isinstance(request["event"], dict)


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (b'{"kind": "retry.due", "run_id": 7, "task": "a", "attempt": 1}', "'run_id' must be"),
        (b'{"kind": "task.finished", "run_id": "r", "task": "a", "attempt": true, "ok": true}',
         "'attempt' must be an integer"),
        (b'{"kind": ["run.requested"]}', "unknown kind"),
        (b'{"kind": "window.due", "window": "w", "opened_at": "soon"}', "must be a number"),
        (b'{"kind": "events.batched", "window": "w", "pipeline": "p", "trigger": 0, '
         b'"key": null, "events": [1]}', "list of objects"),
    ],
)  # fmt: skip
def test_wrong_json_types_are_named(value: bytes, says: str) -> None:
    with pytest.raises(BadMessage, match=says):
        decode_control(value)


@pytest.mark.parametrize(
    ("hs", "says"),
    [
        ([("ce_id", None)], "'ce_id' has no value"),
        ([("ce_id", b"\xff")], "'ce_id' is not UTF-8"),
        ([("ce_id", b"a"), ("CE_ID", b"b")], "appears more than once"),
        ([("content-type", None), ("ce_id", b"1")], "'content-type' has no value"),
    ],
)
def test_bad_headers_are_named(hs: list[tuple[str, bytes | None]], says: str) -> None:
    with pytest.raises(BadMessage, match=says):
        from_kafka(hs, b"{}")


@settings(max_examples=300, deadline=None)
@given(
    prefix=st.sampled_from(["", "window:", "closed:"]),
    name=st.text(max_size=12),
    value=st.none() | st.binary(max_size=64) | json_values.map(orjson.dumps),
)
def test_changelog_fold_takes_a_record_or_says_why(prefix: str, name: str, value: Any) -> None:
    """A changelog record of any shape, under any of its key kinds (run, open window,
    closed window's ids), is folded in or refused with ``BadMessage``, table unchanged."""
    kv = MemoryKV()
    batch = Store(kv, "runs", 0).batch()
    try:
        batch.fold((prefix + name).encode(), value)
    except BadMessage as exc:
        assert "changelog record is unreadable" in str(exc)
        batch.commit(None)
        assert kv.data == {}
