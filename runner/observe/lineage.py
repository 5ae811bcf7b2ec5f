"""OpenLineage events of finished runs (``openlineage-python``'s models), for
``hw.lineage``. Pure: a completion in, RunEvents (as JSON-ready dicts) out.

Per run: START (``run_start``, written by the control processor in the transaction that
starts the run) and COMPLETE, FAIL or ABORT (cancelled) for the job named after the
pipeline (``lineage_events``, from its completion); per task that ran: START and
COMPLETE/FAIL/ABORT for the job ``<pipeline>.<task>``, its run a child of the pipeline's
(``parent`` facet), both built from the completion once the run has ended, each with the
time it happened. The input dataset is the trigger's source object (namespace: the event's
source, name: its subject, else its id); a task's output datasets are those its
``outputs:`` declare. The custom ``headwater`` run facet says where a task ran (route,
region, instance) and the data's residency.
"""

from __future__ import annotations

import uuid
from typing import Any

import attr
from openlineage.client import event_v2 as ol
from openlineage.client.facet_v2 import parent_run
from openlineage.client.generated.base import RunFacet
from openlineage.client.serde import Serde

PRODUCER = "https://github.com/headwater-runner/headwater"
NAMESPACE = "headwater"
_FACET_SCHEMA = "https://github.com/headwater-runner/headwater/schemas/placement.json"


@attr.define
class HeadwaterRunFacet(RunFacet):
    """Where a task ran and what residency its data has."""

    route: str | None = attr.field(default=None)
    region: str | None = attr.field(default=None)
    instance: str | None = attr.field(default=None)
    residency: str | None = attr.field(default=None)

    @staticmethod
    def _get_schema() -> str:
        return _FACET_SCHEMA


def _state(status: Any) -> ol.RunState:
    """How a run or task ended, as OpenLineage says it: cancelled is ABORT."""
    if status == "succeeded":
        return ol.RunState.COMPLETE
    return ol.RunState.ABORT if status == "cancelled" else ol.RunState.FAIL


def _child_id(run_id: str, task: str) -> str:
    return str(uuid.uuid5(uuid.UUID(run_id), task))


def _inputs(trigger: dict[str, Any]) -> list[ol.InputDataset]:
    source = str(trigger.get("source") or "unknown")
    name = str(trigger.get("subject") or trigger.get("id") or "event")
    return [ol.InputDataset(namespace=source, name=name)]


def run_start(
    run_id: str, pipeline: str, trigger: dict[str, Any], started_at: str, namespace: str = NAMESPACE
) -> dict[str, Any]:
    """The START RunEvent of a run, as it starts."""
    event = ol.RunEvent(
        eventType=ol.RunState.START,
        eventTime=started_at,
        run=ol.Run(runId=run_id),
        job=ol.Job(namespace=namespace, name=pipeline),
        producer=PRODUCER,
        inputs=_inputs(trigger),
    )
    return _dict(event)


def lineage_events(
    completion: dict[str, Any],
    outputs: dict[str, list[tuple[str, str]]] | None = None,
    residency: dict[str, str | None] | None = None,
    namespace: str = NAMESPACE,
    *,
    start: bool = True,
) -> list[dict[str, Any]]:
    """The OpenLineage RunEvents of one completion (``outputs``: task -> its declared
    (namespace, name) datasets; ``residency``: task -> residency); without the run's
    START when ``start`` is false (written when it started)."""
    pipeline = str(completion["pipeline"])
    run_id = str(completion["run_id"])
    trigger = completion.get("trigger") or {}
    inputs = _inputs(trigger)
    job = ol.Job(namespace=namespace, name=pipeline)
    ended = _state(completion.get("status"))
    finished = str(completion["finished_at"])
    events: list[dict[str, Any]] = []
    if start:
        events.append(
            run_start(run_id, pipeline, trigger, str(completion["started_at"]), namespace)
        )
    parent = parent_run.ParentRunFacet(
        run=parent_run.Run(runId=run_id), job=parent_run.Job(namespace=namespace, name=pipeline)
    )
    for task, record in (completion.get("tasks") or {}).items():
        if record.get("status") in (None, "pending", "skipped") or not record.get("attempts"):
            continue  # never started
        placed = record.get("ran_on") or {}
        facets: dict[str, Any] = {
            "parent": parent,
            "headwater": HeadwaterRunFacet(
                route=placed.get("route"),
                region=placed.get("region"),
                instance=placed.get("instance"),
                residency=(residency or {}).get(task),
            ),
        }
        child = ol.Run(runId=_child_id(run_id, task), facets=facets)
        task_job = ol.Job(namespace=namespace, name=f"{pipeline}.{task}")
        written = [ol.OutputDataset(namespace=n, name=d) for n, d in (outputs or {}).get(task, [])]
        done = _state(record.get("status"))
        started = str(completion["started_at"])
        for kind, at, wrote in ((ol.RunState.START, started, []), (done, finished, written)):
            events.append(
                _dict(
                    ol.RunEvent(
                        eventType=kind,
                        eventTime=at,
                        run=child,
                        job=task_job,
                        producer=PRODUCER,
                        inputs=inputs,
                        outputs=wrote,
                    )
                )
            )
    end = ol.RunEvent(
        eventType=ended,
        eventTime=finished,
        run=ol.Run(runId=run_id),
        job=job,
        producer=PRODUCER,
        inputs=inputs,
    )
    return [*events, _dict(end)]


def _dict(event: ol.RunEvent) -> dict[str, Any]:
    return dict(Serde.to_dict(event))
