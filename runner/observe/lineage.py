"""OpenLineage events of finished runs (``openlineage-python``'s models), for
``hw.lineage``. Pure: a completion in, RunEvents (as JSON-ready dicts) out.

Per run: START (at the run's start) and COMPLETE, FAIL or ABORT (cancelled) for the job named
after the pipeline; per task that ran: START and COMPLETE/FAIL for the job
``<pipeline>.<task>``, its run a child of the pipeline's (``parent`` facet). The input
dataset is the trigger's source object (namespace: the event's source, name: its subject,
else its id); a task's output datasets are those its ``outputs:`` declare. The custom
``headwater`` run facet says where a task ran (route, region, instance) and the data's
residency. Built from the completion, so both events of a run are written together once
it has ended; their ``eventTime`` is when each happened.
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


def lineage_events(
    completion: dict[str, Any],
    outputs: dict[str, list[tuple[str, str]]] | None = None,
    residency: dict[str, str | None] | None = None,
    namespace: str = NAMESPACE,
) -> list[dict[str, Any]]:
    """The OpenLineage RunEvents of one completion (``outputs``: task -> its declared
    (namespace, name) datasets; ``residency``: task -> residency)."""
    pipeline = str(completion["pipeline"])
    run_id = str(completion["run_id"])
    trigger = completion.get("trigger") or {}
    source = str(trigger.get("source") or "unknown")
    name = str(trigger.get("subject") or trigger.get("id") or "event")
    inputs = [ol.InputDataset(namespace=source, name=name)]
    job = ol.Job(namespace=namespace, name=pipeline)
    ended = _state(completion.get("status"))
    events = [
        ol.RunEvent(
            eventType=ol.RunState.START,
            eventTime=str(completion["started_at"]),
            run=ol.Run(runId=run_id),
            job=job,
            producer=PRODUCER,
            inputs=inputs,
        )
    ]
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
        events.append(
            ol.RunEvent(
                eventType=ol.RunState.START,
                eventTime=started,
                run=child,
                job=task_job,
                producer=PRODUCER,
                inputs=inputs,
            )
        )
        events.append(
            ol.RunEvent(
                eventType=done,
                eventTime=str(completion["finished_at"]),
                run=child,
                job=task_job,
                producer=PRODUCER,
                inputs=inputs,
                outputs=written,
            )
        )
    events.append(
        ol.RunEvent(
            eventType=ended,
            eventTime=str(completion["finished_at"]),
            run=ol.Run(runId=run_id),
            job=job,
            producer=PRODUCER,
            inputs=inputs,
        )
    )
    return [Serde.to_dict(event) for event in events]
