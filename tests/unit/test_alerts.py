"""The alerts' pure parts: what is worth an alert, and the rate limit."""

from __future__ import annotations

from types import SimpleNamespace

import orjson

from headwater.runner.alerts import Throttle, alert_of
from headwater.runner.settings import Topics


def record(value: object, headers: list[tuple[str, bytes]] | None = None) -> SimpleNamespace:
    return SimpleNamespace(value=orjson.dumps(value), headers=headers or [], timestamp=0)


def test_what_is_worth_an_alert() -> None:
    topics = Topics()
    failed = {"run_id": "r1", "pipeline": "p", "status": "failed", "error": "task a failed: x"}
    kind, subject, text, fields = alert_of(topics.completions, topics, record(failed))  # type: ignore[misc]
    assert (kind, subject, fields["run_id"]) == ("run.failed", "p", "r1")
    assert "r1" in text and "task a failed: x" in text
    assert alert_of(topics.completions, topics, record({**failed, "status": "succeeded"})) is None
    dlq = {"reason": "not JSON", "origin": {"source": "uploads", "message_id": "m"}}
    assert alert_of(topics.dlq, topics, record(dlq))[:2] == ("dlq", "uploads")  # type: ignore[index]
    opened = record(
        {"reason": "503"},
        [("ce_type", b"headwater.breaker.opened"), ("ce_subject", b"route default")],
    )
    assert alert_of(topics.status, topics, opened)[:2] == ("breaker.opened", "route default")  # type: ignore[index]
    closed = record({}, [("ce_type", b"headwater.breaker.closed")])
    assert alert_of(topics.status, topics, closed) is None
    assert alert_of(topics.dlq, topics, SimpleNamespace(value=b"garbage", headers=[])) is None


def test_the_rate_limit_holds_back_and_counts() -> None:
    throttle = Throttle(60.0)
    assert throttle.allow("run.failed", "p", 0.0) == (True, 0)
    assert throttle.allow("run.failed", "p", 10.0) == (False, 0)
    assert throttle.allow("run.failed", "q", 10.0) == (True, 0)  # another pipeline
    assert throttle.allow("run.failed", "p", 20.0) == (False, 0)
    assert throttle.allow("run.failed", "p", 61.0) == (True, 2)  # says how many were held
