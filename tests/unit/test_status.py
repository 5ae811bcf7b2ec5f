"""``headwater status``'s fold of ``hw.status`` events: the latest event of each
component is its state; other events are ignored."""

from __future__ import annotations

from datetime import UTC, datetime

from headwater.runner.observe.status import Status


def event(kind: str, subject: str, instance: str = "w1", **data: object) -> dict[str, object]:
    return {
        "type": f"headwater.{kind}",
        "subject": subject,
        "time": "2026-12-03T12:00:00+00:00",
        "data": {"instance": instance, **data},
    }


def test_the_latest_event_of_each_component_is_its_state() -> None:
    status = Status().fold(
        [
            event("breaker.opened", "route default", reason="refused"),
            event("breaker.opened", "route gpu", "w2"),
            event("breaker.half_opened", "route default"),
            event("flow.paused", "route default"),
            event("flow.resumed", "route default"),
            event("service.unhealthy", "service aws.s3", reason="timed out"),
            {"type": "something.else", "subject": "x"},
            {"type": "headwater.breaker.closed", "data": "not an object"},
        ]
    )
    status.lags = {("hw.router", "hw.events"): 12}
    shown = status.to_json()
    assert [(b["scope"], b["state"]) for b in shown["breakers"]] == [
        ("", "closed"),
        ("route default", "half-open"),
        ("route gpu", "open"),
    ]
    assert shown["paused"] == [] and shown["services"][0]["reason"] == "timed out"
    text = status.render(datetime(2026, 12, 3, 12, 5, tzinfo=UTC))
    assert "route gpu [w2]: open since 2026-12-03T12:00:00+00:00 (5 min ago)" in text
    assert "paused: none" in text and "hw.router on hw.events: 12" in text
