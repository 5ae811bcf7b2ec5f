"""Trigger matching: attribute globs, data conditions, the index."""

from __future__ import annotations

from typing import Any

import pytest

from headwater.runner.envelope import CloudEvent
from headwater.runner.model.matching import TriggerIndex, condition_holds, trigger_matches
from headwater.runner.model.pipeline import Condition, Pipeline, Task, Trigger


def event(
    type_: str = "aws.s3.object.created", subject: str | None = None, **data: Any
) -> CloudEvent:
    return CloudEvent(id="1", source="arn:aws:s3:::in", type=type_, subject=subject, data=data)


def pipeline(name: str, *triggers: Trigger) -> Pipeline:
    return Pipeline(name, triggers, (Task("t", "python", "m:f"),))


@pytest.mark.parametrize(
    ("trigger", "matches"),
    [
        (Trigger("aws.s3.object.created"), True),
        (Trigger("aws.s3.object.removed"), False),
        (Trigger("aws.s3.*"), True),
        (Trigger("aws.s3.object.created", subject="s3://in/*.csv"), True),
        (Trigger("aws.s3.object.created", subject="s3://in/*.json"), False),
        (Trigger("aws.s3.object.created", source="arn:aws:s3:::in"), True),
        (Trigger("aws.s3.object.created", source="arn:aws:s3:::other"), False),
    ],
)
def test_attributes_match_exactly_or_by_glob(trigger: Trigger, matches: bool) -> None:
    assert trigger_matches(trigger, event(subject="s3://in/a/b.csv")) is matches


def test_glob_on_subject_requires_a_subject() -> None:
    assert not trigger_matches(Trigger("aws.s3.object.created", subject="*"), event())


@pytest.mark.parametrize(
    ("path", "op", "value", "holds"),
    [
        (("size",), "gt", 0, True),
        (("size",), "gt", 10, False),
        (("size",), "lte", 10, True),
        (("size",), "eq", 10, True),
        (("size",), "ne", 10, False),
        (("meta", "owner"), "eq", "ana", True),
        (("meta", "owner"), "in", ["bo", "ana"], True),
        (("meta", "owner"), "glob", "a*", True),
        (("meta", "missing"), "exists", False, True),
        (("meta", "owner"), "exists", True, True),
        (("tags", "1"), "eq", "b", True),
        (("size",), "gt", "ten", False),  # a type mismatch is no match, not an error
        (("nothing",), "eq", None, False),
    ],
)
def test_conditions_on_data(path: tuple[str, ...], op: Any, value: Any, holds: bool) -> None:
    data = {"size": 10, "meta": {"owner": "ana"}, "tags": ["a", "b"]}
    assert condition_holds(Condition(path, op, value), data) is holds


def test_all_conditions_must_hold() -> None:
    trigger = Trigger(
        "aws.s3.object.created",
        conditions=(Condition(("size",), "gt", 0), Condition(("size",), "lt", 5)),
    )
    assert trigger_matches(trigger, event(size=3))
    assert not trigger_matches(trigger, event(size=7))


def test_index_returns_each_matching_pipeline_once() -> None:
    csv = pipeline("csv", Trigger("aws.s3.object.created", subject="*.csv"), Trigger("aws.s3.*"))
    big = pipeline(
        "big", Trigger("aws.s3.object.created", conditions=(Condition(("size",), "gte", 100),))
    )
    other = pipeline("other", Trigger("gcs.object.finalized"))
    index = TriggerIndex([csv, big, other])

    assert [p.name for p in index.match(event(subject="x.csv", size=1))] == ["csv"]
    assert [p.name for p in index.match(event(subject="x.csv", size=500))] == ["csv", "big"]
    assert [p.name for p in index.match(event("aws.s3.object.removed"))] == ["csv"]
    assert index.match(event("unknown.type")) == []


def test_index_agrees_with_testing_every_trigger() -> None:
    triggers = [
        Trigger("aws.s3.object.created"),
        Trigger("aws.s3.*", subject="*.csv"),
        Trigger("aws.s3.object.created", subject="a.csv"),
        Trigger("aws.s3.object.created", subject="a.csv", source="other"),
        Trigger("aws.*", conditions=(Condition(("size",), "gt", 10),)),
        Trigger("aws.s3.object.created", conditions=(Condition(("size",), "gt", 10),)),
        Trigger("gcs.object.finalized", subject="a.csv"),
    ]
    pipelines = [pipeline(f"p{i}", t) for i, t in enumerate(triggers)]
    pipelines.append(pipeline("two", triggers[6], triggers[2]))
    index = TriggerIndex(pipelines)
    for kind in ("aws.s3.object.created", "aws.s3.object.removed", "gcs.object.finalized"):
        for subject in ("a.csv", "b.csv", "c.txt", None):
            for size in (1, 50):
                e = event(kind, subject=subject, size=size)
                expected = [
                    p.name for p in pipelines if any(trigger_matches(t, e) for t in p.triggers)
                ]
                assert [p.name for p in index.match(e)] == expected, (kind, subject, size)


def test_explain_names_the_first_filter_that_fails_and_the_value_it_saw() -> None:
    from headwater.runner.envelope import CloudEvent
    from headwater.runner.model.matching import explain
    from headwater.runner.model.pipeline import Condition, Trigger

    trigger = Trigger(
        "aws.s3.*",
        subject="s3://*/incoming/*.csv",
        conditions=(Condition(("size",), "gt", 0), Condition(("tags",), "exists", True)),
    )
    event = CloudEvent("1", "/s3", "aws.s3.object.created", {"size": 3, "tags": []})
    assert explain(trigger, event) == 'subject absent does not match "s3://*/incoming/*.csv"'
    event.subject = "s3://b/in/x.txt"
    assert explain(trigger, event) == (
        'subject "s3://b/in/x.txt" does not match "s3://*/incoming/*.csv"'
    )
    event.subject = "s3://b/incoming/x.csv"
    assert explain(trigger, event) is None
    event.data = {"size": 0}
    assert explain(trigger, event) == "data.size is 0, not gt 0"
    event.data = {"size": 1}
    assert explain(trigger, event) == "data.tags is absent, not exists True"
    assert explain(Trigger("orders.placed"), event) == (
        'type "aws.s3.object.created" does not equal "orders.placed"'
    )
