"""The run state machine as a pure fold: dispatch order, retries, failure, dedup."""

from __future__ import annotations

import uuid

from headwater.runner.log.records import RetryDue, RunRequested, TaskFinished
from headwater.runner.model.pipeline import Backoff, Pipeline, Task, Trigger
from headwater.runner.runs.machine import (
    Dispatch,
    Finish,
    Run,
    ScheduleRetry,
    run_id_for,
    step,
)

PIPELINE = Pipeline(
    "p",
    (Trigger("t"),),
    (
        Task("a", "python", "m:a"),
        Task("b", "python", "m:b", needs=("a",), retries=1, backoff=Backoff(2.0, 10.0, 2.0, 0.0)),
        Task("c", "python", "m:c", needs=("a",)),
        Task("d", "python", "m:d", needs=("b", "c")),
    ),
)
EVENT = {"id": "e1", "source": "s", "type": "t"}


def started() -> Run:
    transition = step(None, RunRequested("r1", "p", EVENT), PIPELINE, now=100.0, rand=0.5)
    assert transition.effects == [Dispatch("a", 1)]
    assert transition.run is not None
    return transition.run


def done(task: str, attempt: int = 1, ok: bool = True, output: object = None) -> TaskFinished:
    return TaskFinished("r1", task, attempt, ok, output, None if ok else "boom", 1.0, 2.0)


def test_run_ids_are_derived_from_pipeline_and_event() -> None:
    assert run_id_for("p", "e1", "s") == run_id_for("p", "e1", "s")
    assert (
        len(
            {
                run_id_for("p", "e1", "s"),
                run_id_for("q", "e1", "s"),
                run_id_for("p", "e2", "s"),
                run_id_for("p", "e1", "s2"),
            }
        )
        == 4
    )


def test_a_duplicate_trigger_changes_nothing() -> None:
    run = started()
    again = step(run, RunRequested("r1", "p", EVENT), PIPELINE, 101.0, 0.5)
    assert not again.applied and again.effects == [] and again.run is run


def test_tasks_dispatch_when_their_needs_succeed_and_the_run_finishes_once() -> None:
    run = started()
    assert step(run, done("a", output={"x": 1}), PIPELINE, 101, 0.5).effects == [
        Dispatch("b", 1),
        Dispatch("c", 1),
    ]
    assert step(run, done("b"), PIPELINE, 102, 0.5).effects == []
    assert step(run, done("c"), PIPELINE, 103, 0.5).effects == [Dispatch("d", 1)]
    assert run.upstream_outputs(PIPELINE, "b") == {"a": {"x": 1}}
    final = step(run, done("d", output="ok"), PIPELINE, 104, 0.5)
    assert final.effects == [Finish("succeeded")]
    assert run.status == "succeeded" and run.finished_at == 104
    assert not step(run, done("d"), PIPELINE, 105, 0.5).applied


def test_a_replayed_result_is_ignored() -> None:
    run = started()
    step(run, done("a"), PIPELINE, 101, 0.5)
    replay = step(run, done("a"), PIPELINE, 102, 0.5)
    assert not replay.applied and replay.effects == []


def test_a_failed_attempt_is_retried_after_backoff_then_fails_the_run() -> None:
    run = started()
    step(run, done("a"), PIPELINE, 101, 0.5)
    first = step(run, done("b", ok=False), PIPELINE, 102, 0.5)
    assert first.effects == [ScheduleRetry("b", 1, 104.0)]
    assert run.tasks["b"].status == "retry_wait"
    assert not step(run, RetryDue("r1", "b", 0), PIPELINE, 104, 0.5).applied
    assert step(run, RetryDue("r1", "b", 1), PIPELINE, 104, 0.5).effects == [Dispatch("b", 2)]
    step(run, done("c"), PIPELINE, 105, 0.5)
    last = step(run, done("b", attempt=2, ok=False), PIPELINE, 106, 0.5)
    assert last.effects == [Finish("failed")]
    assert run.tasks["b"].status == "failed" and run.tasks["b"].error == "boom"
    assert run.tasks["d"].status == "skipped"


def test_the_run_waits_for_independent_branches_before_failing() -> None:
    run = started()
    step(run, done("a"), PIPELINE, 101, 0.5)
    step(run, done("b", ok=False), PIPELINE, 102, 0.5)
    step(run, RetryDue("r1", "b", 1), PIPELINE, 104, 0.5)
    assert step(run, done("b", attempt=2, ok=False), PIPELINE, 105, 0.5).effects == []
    assert run.status == "running"  # c is still running
    assert step(run, done("c"), PIPELINE, 106, 0.5).effects == [Finish("failed")]


def test_state_round_trips_through_json() -> None:
    run = started()
    step(run, done("a", output={"rows": [1, 2]}), PIPELINE, 101, 0.5)
    assert Run.from_json(run.to_json()) == run


def test_backoff_grows_caps_and_jitters() -> None:
    backoff = Backoff(initial=1.0, maximum=5.0, multiplier=2.0, jitter=0.1)
    assert [backoff.delay(n, 0.5) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 5.0]
    assert backoff.delay(1, 0.0) == 0.9 and backoff.delay(1, 0.999999) < 1.1


def test_run_ids_are_the_uuid5_of_pipeline_source_and_event_id() -> None:
    namespace = uuid.UUID("6f1a7c36-6a8e-4b0e-9a43-2d1f3c9b7e10")
    for pipeline, event_id, source in [("p", "1", "/s"), ("csv-report", "é/∂", "arn:aws:s3")]:
        expected = uuid.uuid5(namespace, f"{pipeline}\x00{source}\x00{event_id}")
        assert run_id_for(pipeline, event_id, source) == str(expected)
