"""OpenLineage events of a finished run, built with openlineage-python's models: START
and COMPLETE/FAIL per run and per task, parent facets, placement and residency facets,
the trigger's object as input and declared outputs as output datasets."""

from __future__ import annotations

import uuid

from headwater.runner.observe.lineage import lineage_events
from tests.lineage_schema import problems

RUN = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"


def completion(status: str = "succeeded") -> dict[str, object]:
    return {
        "run_id": RUN,
        "pipeline": "csv-report",
        "status": status,
        "trigger": {"id": "e1", "source": "s3://incoming", "subject": "daily/sales.csv"},
        "started_at": "2026-12-06T10:00:00.000Z",
        "finished_at": "2026-12-06T10:00:02.500Z",
        "tasks": {
            "read": {
                "status": "succeeded",
                "attempts": 1,
                "ran_on": {"route": "eu-1", "region": "eu-west-1", "instance": "w1"},
            },
            "write": {
                "status": "succeeded" if status == "succeeded" else status,
                "attempts": 2,
                "ran_on": None,
            },
            "notify": {
                "status": "skipped" if status != "cancelled" else "cancelled",
                "attempts": 0,
            },
        },
    }


def test_a_run_and_each_task_that_ran_have_a_start_and_an_end() -> None:
    events = lineage_events(
        completion(), {"write": [("s3://reports", "daily.json")]}, {"read": "eu", "write": "eu"}
    )
    pairs: dict[str, list[str]] = {}
    for event in events:
        assert problems(event) == [], event
        assert event["schemaURL"].startswith("https://openlineage.io/spec/")
        assert event["producer"].startswith("https://")
        assert event["eventTime"].endswith("Z")
        uuid.UUID(event["run"]["runId"])  # a UUID, as the spec requires
        pairs.setdefault(event["job"]["name"], []).append(event["eventType"])
    assert pairs == {
        "csv-report": ["START", "COMPLETE"],
        "csv-report.read": ["START", "COMPLETE"],
        "csv-report.write": ["START", "COMPLETE"],
    }
    read = next(e for e in events if e["job"]["name"] == "csv-report.read")
    assert read["run"]["facets"]["parent"]["run"]["runId"] == RUN
    placed = read["run"]["facets"]["headwater"]
    assert (placed["route"], placed["region"], placed["residency"]) == ("eu-1", "eu-west-1", "eu")
    assert read["inputs"] == [
        {"namespace": "s3://incoming", "name": "daily/sales.csv", "facets": {}, "inputFacets": {}}
    ]
    write_end = [e for e in events if e["job"]["name"] == "csv-report.write"][-1]
    assert [(o["namespace"], o["name"]) for o in write_end["outputs"]] == [
        ("s3://reports", "daily.json")
    ]


def test_a_failed_run_ends_with_fail() -> None:
    events = lineage_events(completion("failed"))
    ends = {e["job"]["name"]: e["eventType"] for e in events if e["eventType"] != "START"}
    assert ends == {"csv-report": "FAIL", "csv-report.read": "COMPLETE", "csv-report.write": "FAIL"}


def test_a_cancelled_run_ends_with_abort_and_a_task_never_started_has_no_events() -> None:
    events = lineage_events(completion("cancelled"))
    ends = {e["job"]["name"]: e["eventType"] for e in events if e["eventType"] != "START"}
    assert ends == {
        "csv-report": "ABORT",
        "csv-report.read": "COMPLETE",
        "csv-report.write": "ABORT",
    }


def test_the_schema_check_catches_what_is_wrong() -> None:
    [event, *_] = lineage_events(completion())
    assert problems(event) == []
    broken = {**event, "eventType": "DONE", "run": {"runId": "r1"}, "eventTime": "yesterday"}
    said = " | ".join(problems(broken))
    assert "DONE" in said and "'r1' is not a UUID" in said and "eventTime" in said, said
    del broken["producer"]
    assert any("producer" in p for p in problems(broken))
    child = next(e for e in lineage_events(completion()) if e["run"].get("facets"))
    del child["run"]["facets"]["parent"]["job"]
    del child["run"]["facets"]["headwater"]["_producer"]
    said = " | ".join(problems(child))
    assert "run.facets['parent']: 'job' is a required property" in said, said
    assert "run.facets.headwater[]: '_producer' is a required property" in said, said
