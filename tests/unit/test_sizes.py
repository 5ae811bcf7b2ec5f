"""Every write is sized before it is sent: a record Kafka would refuse is never added, and
a DLQ entry keeps only the head of a huge payload."""

from __future__ import annotations

import orjson
import pytest

from headwater.runner.errors import BadMessage, RecordTooLarge
from headwater.runner.log import kafka
from headwater.runner.log import writer as writer_module
from headwater.runner.log.records import DLQ_PAYLOAD_BYTES, dlq_record


async def test_a_record_over_the_limit_is_refused_before_it_is_added() -> None:
    writer = kafka.BatchWriter(producer=None)  # type: ignore[arg-type]  # never reached
    with pytest.raises(RecordTooLarge, match="over the 1,000,000-byte record limit") as caught:
        await writer.add("t", b"x" * kafka.MAX_RECORD_BYTES, key=b"k", partition=0)
    assert isinstance(caught.value, BadMessage) and caught.value.size > caught.value.limit


def test_record_size_counts_key_value_and_headers() -> None:
    small = kafka.record_size(b"k", b"v")
    assert kafka.record_size(b"k", b"v", [("ce_id", b"123")]) == small + 5 + 3 + 8
    assert kafka.record_size(None, None) == writer_module.RECORD_OVERHEAD


def test_a_dlq_entry_keeps_the_head_of_a_huge_payload() -> None:
    entry = orjson.loads(dlq_record("too big", {"source": "q"}, b"a" * 5_000_000))
    assert entry["payload_size"] == 5_000_000 and entry["payload_truncated"] is True
    assert len(entry["payload"]) == DLQ_PAYLOAD_BYTES
    whole = orjson.loads(dlq_record("bad", {}, b"\xff\x00", [("h", None)]))
    assert "payload_truncated" not in whole and whole["headers"] == {"h": None}
