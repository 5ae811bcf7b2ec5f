"""The health of needed services (``headwater.runner.flow.health``): parsing what a
pipeline writes, and the pure state of each service under a fake clock."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from headwater.runner.flow.gate import REASON_CHARS, Change
from headwater.runner.flow.health import Health, ServiceSpec, parse_service


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


S3 = parse_service("aws.s3:reports")
QUEUE = parse_service("aws.sqs:orders")


# -- parse_service ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind", "target"),
    [
        ("http://warehouse.internal/health", "http", "http://warehouse.internal/health"),
        ("https://api.example.com:8443/ping?x=1", "http", "https://api.example.com:8443/ping?x=1"),
        ("tcp://db.internal:5432", "tcp", "db.internal:5432"),
        ("tcp://[::1]:9092", "tcp", "[::1]:9092"),
        ("aws.s3", "aws.s3", ""),
        ("aws.s3:my-bucket.logs", "aws.s3", "my-bucket.logs"),
        ("aws.sqs", "aws.sqs", ""),
        ("aws.sqs:orders.fifo", "aws.sqs", "orders.fifo"),
        (
            "aws.sqs:https://sqs.us-east-1.amazonaws.com/123456789012/orders",
            "aws.sqs",
            "https://sqs.us-east-1.amazonaws.com/123456789012/orders",
        ),
        ("gcp.pubsub", "gcp.pubsub", ""),
        ("gcp.pubsub:projects/p-1/topics/uploads", "gcp.pubsub", "projects/p-1/topics/uploads"),
        ("gcp.pubsub:uploads", "gcp.pubsub", "uploads"),
        ("azure.servicebus", "azure.servicebus", ""),
        ("azure.servicebus:orders", "azure.servicebus", "orders"),
        ("azure.servicebus:blobs/subscriptions/hw", "azure.servicebus", "blobs/subscriptions/hw"),
    ],
)
def test_each_written_form_parses_with_the_text_as_its_name(
    text: str, kind: str, target: str
) -> None:
    assert parse_service(text) == ServiceSpec(text, kind, target)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "empty"),
        ("x" * 501, "longer than 500"),
        ("aws.s3: bucket", "whitespace"),
        ("aws.s3:bucket\n", "whitespace"),
        ("aws.dynamodb", "unknown kind 'aws.dynamodb'"),
        ("AWS.S3", "unknown kind"),
        ("ftp://files.internal", "unknown scheme 'ftp'"),
        ("tcp://db.internal", "tcp://HOST:PORT"),
        ("tcp://db.internal:0", "tcp://HOST:PORT"),
        ("tcp://db.internal:99999", "not a valid URL"),
        ("tcp://db.internal:5432/x", "nothing after it"),
        ("http://", "no host"),
        ("http://[::1/x", "not a valid URL"),
        ("aws.s3:", "nothing after ':'"),
        ("aws.s3:Bad_Bucket", "not an S3 bucket name"),
        ("aws.sqs:a/b", "not an SQS queue"),
        ("gcp.pubsub:projects/p/subscriptions/s", "projects/PROJECT/topics/TOPIC"),
        ("azure.servicebus:-q", "queue name"),
    ],
)
def test_a_bad_service_is_refused_naming_the_text(text: str, says: str) -> None:
    with pytest.raises(ValueError, match="service") as caught:
        parse_service(text)
    assert says in str(caught.value)
    if text and len(text) <= 500:
        assert repr(text) in str(caught.value)


@pytest.mark.parametrize(
    "text",
    ["https://admin:hunter2@warehouse.internal/health", "tcp://u:hunter2@db:5432", "http://u@h/"],
)
def test_a_url_with_credentials_is_refused_without_quoting_them(text: str) -> None:
    with pytest.raises(ValueError, match="secret reference") as caught:
        parse_service(text)
    assert "hunter2" not in str(caught.value)
    assert "***@" in str(caught.value)


def test_a_value_that_is_not_text_is_refused() -> None:
    with pytest.raises(ValueError, match="expected text"):
        parse_service(42)  # type: ignore[arg-type]


@given(st.text(max_size=600))
def test_parse_service_raises_nothing_but_value_error(text: str) -> None:
    try:
        spec = parse_service(text)
    except ValueError:
        return
    assert spec.name == text
    assert parse_service(spec.name) == spec


@given(
    st.sampled_from(
        ["aws.s3", "aws.sqs", "gcp.pubsub", "azure.servicebus", "tcp://h", "http://"]
    ).flatmap(lambda head: st.text(max_size=80).map(lambda tail: f"{head}:{tail}"))
)
def test_near_miss_texts_raise_nothing_but_value_error(text: str) -> None:
    try:
        parse_service(text)
    except ValueError as exc:
        assert str(exc)


# -- Health ----------------------------------------------------------------------------------


def test_a_watched_service_is_probed_at_once_and_never_twice_at_a_time(clock: Clock) -> None:
    health = Health(clock, interval=10)
    health.watch(S3)
    health.watch(S3)  # watching again changes nothing
    assert health.due() == [S3]
    clock.now += 60
    assert health.due() == []  # the first probe has not reported
    assert health.next_due() is None
    health.result(S3, None)
    assert health.due() == []
    assert health.next_due() == 10
    clock.now += 10
    assert health.due() == [S3]


def test_a_service_starts_healthy_and_unknown(clock: Clock) -> None:
    health = Health(clock)
    health.watch(S3)
    assert health.unhealthy(S3.name) is None
    assert health.states()[S3.name]["state"] == "unknown"
    assert health.unhealthy("aws.s3:never-watched") is None


def probe(health: Health, clock: Clock, spec: ServiceSpec, error: str | None) -> None:
    """Let the clock reach ``spec``'s next probe and report ``error`` for it."""
    clock.now += health.next_due() or 0
    assert spec in health.due()
    health.result(spec, error)


def test_unhealthy_only_after_the_threshold_of_failures_in_a_row(clock: Clock) -> None:
    health = Health(clock, interval=10, unhealthy_after=3)
    health.watch(S3)
    probe(health, clock, S3, "connection refused")
    probe(health, clock, S3, None)  # a success resets the count
    probe(health, clock, S3, "connection refused")
    probe(health, clock, S3, "connection refused")
    assert health.unhealthy(S3.name) is None
    assert health.changes() == []
    probe(health, clock, S3, "read timed out")
    assert health.unhealthy(S3.name) == (
        f"service {S3.name} is unhealthy (3 failed probes): read timed out"
    )
    assert health.states()[S3.name] | {"checked_at": None} == {
        "kind": "aws.s3",
        "target": "reports",
        "state": "unhealthy",
        "reason": "read timed out",
        "failures": 3,
        "since": clock.now,
        "checked_at": None,
        "probing": False,
    }


def test_a_failed_probe_is_followed_by_quick_rechecks(clock: Clock) -> None:
    health = Health(clock, interval=30)
    assert health.recheck == 2.0
    assert Health(clock, interval=0.5).recheck == 0.5
    health.watch(S3)
    probe(health, clock, S3, "boom")
    assert health.next_due() == 2.0
    probe(health, clock, S3, "boom")
    assert health.next_due() == 2.0  # unhealthy: recovery is noticed within seconds
    probe(health, clock, S3, None)
    assert health.next_due() == 30


def test_one_success_recovers_and_each_transition_is_reported_once_in_order(
    clock: Clock,
) -> None:
    health = Health(clock, interval=10, unhealthy_after=2)
    health.watch(S3)
    health.watch(QUEUE)
    assert health.due() == [S3, QUEUE]
    health.result(S3, "refused")
    health.result(QUEUE, "no such queue")
    clock.now += 2
    assert health.due() == [S3, QUEUE]
    health.result(S3, "refused")
    went_down = clock.now
    clock.now += 1
    health.result(QUEUE, "no such queue")
    probe(health, clock, S3, "refused")  # still down: no new change
    clock.now += 5
    probe(health, clock, S3, None)
    came_back = clock.now
    changes = health.changes()
    assert changes == [
        Change(
            "service.unhealthy",
            f"service {S3.name}",
            {"service": S3.name, "kind": "aws.s3", "reason": "refused", "failures": 2}
            | {"since": went_down},
        ),
        Change(
            "service.unhealthy",
            f"service {QUEUE.name}",
            {"service": QUEUE.name, "kind": "aws.sqs", "reason": "no such queue"}
            | {"failures": 2, "since": went_down + 1},
        ),
        Change(
            "service.healthy",
            f"service {S3.name}",
            {"service": S3.name, "kind": "aws.s3", "reason": "", "failures": 3}
            | {"since": came_back, "unhealthy_for_s": round(came_back - went_down, 3)},
        ),
    ]
    assert health.changes() == []
    assert health.unhealthy(S3.name) is None
    assert health.holding([S3.name, QUEUE.name]) == health.unhealthy(QUEUE.name)
    assert health.holding([S3.name]) is None


def test_the_reason_is_cut(clock: Clock) -> None:
    health = Health(clock, unhealthy_after=1)
    health.watch(S3)
    probe(health, clock, S3, "x" * 1000)
    [change] = health.changes()
    assert change.data["reason"] == "x" * REASON_CHARS


def test_results_nobody_asked_for_are_ignored(clock: Clock) -> None:
    health = Health(clock, unhealthy_after=1)
    health.result(S3, "boom")  # never watched
    health.watch(S3)
    health.result(S3, "boom")  # watched, but no probe handed out
    assert health.unhealthy(S3.name) is None
    assert health.due() == [S3]
    health.unwatch(S3.name)
    health.result(S3, "boom")  # its probe reported after the service was unwatched
    assert health.states() == {}
    assert health.changes() == []
    assert health.watched() == []


@pytest.mark.parametrize(
    "options",
    [{"interval": 0}, {"timeout": -1}, {"unhealthy_after": 0}, {"recheck": 0}],
)
def test_bad_settings_are_refused(clock: Clock, options: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Health(clock, **options)  # type: ignore[arg-type]
