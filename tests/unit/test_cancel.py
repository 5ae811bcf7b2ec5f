"""``headwater run cancel`` in the run table, without Kafka: a running run ends
``cancelled`` with its attempts out named for the workers, a waiting run gives up its
place, late results and retries change nothing, a finished run is not touched, and a
restore keeps the cancelled marker (the trigger's dedup holds)."""

from __future__ import annotations

import orjson
import pytest

from headwater.runner.cancels import Cancels
from headwater.runner.errors import BadMessage
from headwater.runner.log.records import (
    RetryDue,
    RunCancelled,
    RunRequested,
    TaskFinished,
    decode_control,
    encode_control,
)
from headwater.runner.model.pipeline import Concurrency, Pipeline, Task, Trigger
from headwater.runner.runs.completion import completion_event
from headwater.runner.runs.table import Changes, Completed, Stopped
from headwater.runner.settings import Settings
from tests.unit.test_flow_limits import Harness

TWO = Pipeline(
    "p",
    (Trigger("t"),),
    (Task("a", "python", "m:a", retries=2), Task("b", "python", "m:b", needs=("a",))),
)


def test_a_running_run_ends_cancelled_and_its_attempt_out_is_named() -> None:
    h = Harness(TWO)
    h.apply(RunRequested("r1", "p", {"id": "e1", "source": "s"}))
    changes = h.apply(RunCancelled("r1", "wrong input"))
    [stopped] = [o for o in changes.outputs if isinstance(o, Stopped)]
    assert stopped == Stopped("r1", "p", ("a",), "cancelled: wrong input")
    [completed] = [o for o in changes.outputs if isinstance(o, Completed)]
    run = completed.run
    assert run.status == "cancelled"
    assert {n: t.status for n, t in run.tasks.items()} == {"a": "cancelled", "b": "cancelled"}
    event = completion_event(run)
    assert event.type == "headwater.run.cancelled"
    assert event.data["status"] == "cancelled" and event.data["error"] == "cancelled: wrong input"
    assert [n.hook for n in changes.notes] == ["finished"]


def test_late_results_retries_and_a_second_cancel_change_nothing() -> None:
    h = Harness(TWO)
    h.apply(RunRequested("r1", "p", {"id": "e1", "source": "s"}))
    h.apply(TaskFinished("r1", "a", 1, False, None, "boom", 0.0, 0.0))  # a retry is armed
    changes = h.apply(RunCancelled("r1", ""))
    assert not [o for o in changes.outputs if isinstance(o, Stopped)]  # none was out
    assert h.finished == ["r1"]
    for late in (
        RetryDue("r1", "a", 1),
        TaskFinished("r1", "a", 1, True, {}, None, 0.0, 0.0),
        RunCancelled("r1", "again"),
    ):
        again = h.apply(late)
        assert again.outputs == [] and again.runs == {}
    assert h.finished == ["r1"] and h.started == ["r1"]


def test_a_waiting_run_gives_up_its_place() -> None:
    h = Harness(
        Pipeline("p", (Trigger("t"),), (Task("a", "python", "m:a"),), concurrency=Concurrency(1))
    )
    for n in range(3):
        h.request(n)
    assert h.started == ["r0"]
    h.apply(RunCancelled("r1", "not needed"))
    h.finish(0)
    assert h.started == ["r0", "r2"] and h.finished == ["r1", "r0"]


def test_a_cancelled_run_stays_cancelled_across_a_restore() -> None:
    h = Harness(TWO)
    h.apply(RunRequested("r1", "p", {"id": "e1", "source": "s"}))
    h.apply(RunCancelled("r1", ""))
    again = h.restarted()
    changes = Changes()
    assert again.table.apply(0, RunCancelled("r1", ""), changes) is None
    assert changes.outputs == [] and changes.runs == {}
    again.apply(RunRequested("r1", "p", {"id": "e1", "source": "s"}))  # redelivered trigger
    assert again.started == [] and again.finished == []


def test_a_cancel_round_trips_and_a_bad_one_is_refused() -> None:
    message = RunCancelled("r1", "why")
    assert decode_control(encode_control(message)) == message
    bad = orjson.dumps({"kind": "run.cancelled", "run_id": 7, "reason": "x"})
    with pytest.raises(BadMessage, match="run_id"):
        decode_control(bad)


def test_workers_learn_cancels_and_ignore_garbled_notices() -> None:
    cancels = Cancels(Settings.from_env({}))
    stopped: list[str] = []
    unwatch = cancels.watch("r1", stopped.append)
    cancels.heard(b"not json")
    cancels.heard(orjson.dumps({"run_id": 5}))
    cancels.heard(orjson.dumps({"run_id": "r2", "reason": "x"}))
    assert stopped == [] and cancels.why("r2") == "x"
    cancels.heard(orjson.dumps({"run_id": "r1", "reason": "cancelled: y"}))
    assert stopped == ["cancelled: y"] and cancels.why("r1") == "cancelled: y"
    unwatch()
    cancels.heard(orjson.dumps({"run_id": "r1", "reason": "z"}))
    assert stopped == ["cancelled: y"]
