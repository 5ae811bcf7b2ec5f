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


def test_routes_show_their_workers_and_a_down_route_whoever_said_it() -> None:
    now = datetime(2026, 12, 3, 12, 5, tzinfo=UTC)
    at = now.timestamp()
    status = Status().fold(
        [
            event(
                "route.down",
                "route eu-1",
                "w1",
                reason="no heartbeat for 10s; its tasks run on route eu-2",
            ),
            event("route.down", "route us-1", "w1", reason="no heartbeat for 10s"),
            event("route.up", "route us-1", "w2"),  # another process saw it come back
        ]
    )
    status.heard(
        [
            {"route": "eu-2", "instance": "a", "region": "eu-central-1", "free": 30, "at": at - 2},
            {"route": "eu-2", "instance": "b", "region": "eu-central-1", "free": 2, "at": at - 1},
            {"route": "eu-2", "instance": "a", "region": "eu-central-1", "free": 31, "at": at},
            {"route": 5, "instance": "x", "at": at},  # garbled: ignored
            {"route": "eu-2", "instance": "c", "at": "now"},
            "not a beat",
        ]
    )
    text = status.render(now)
    assert "  eu-2 (eu-central-1): 2 worker(s), last heartbeat 0 s ago, 33 free slot(s)" in text
    assert "  eu-1: no heartbeat in the last minute" in text
    assert "its tasks run on route eu-2" in text and "us-1" not in text, text
    shown = status.to_json()["routes"]
    assert sorted(shown) == ["eu-1", "eu-2"]
    assert [w["instance"] for w in shown["eu-2"]["workers"]] == ["a", "b"]
    assert shown["eu-1"]["down"][0]["state"] == "down"
    assert "routes: none heard" in Status().render(now)
