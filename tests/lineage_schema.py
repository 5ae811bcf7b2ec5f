"""Validate OpenLineage RunEvents against the spec's own JSON Schemas (vendored in
``tests/fixtures/openlineage``): the event against ``OpenLineage.json``, its ``parent``
facet against ``ParentRunFacet.json``, every other run facet against the base ``RunFacet``
(``_producer`` and ``_schemaURL``), plus the formats a format checker may skip without
optional packages (date-time, uuid, uri)."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from jsonschema import Draft202012Validator
from referencing import Registry, Resource

FOLDER = Path(__file__).parent / "fixtures" / "openlineage"


@cache
def _validators() -> tuple[Draft202012Validator, Draft202012Validator, Draft202012Validator]:
    core = json.loads((FOLDER / "OpenLineage.json").read_text())
    parent = json.loads((FOLDER / "ParentRunFacet.json").read_text())
    registry = Registry().with_resources(
        [
            (core["$id"], Resource.from_contents(core)),
            (parent["$id"], Resource.from_contents(parent)),
        ]
    )
    event = Draft202012Validator({"$ref": core["$id"] + "#/$defs/RunEvent"}, registry=registry)
    facet = Draft202012Validator({"$ref": parent["$id"]}, registry=registry)
    base = Draft202012Validator({"$ref": core["$id"] + "#/$defs/RunFacet"}, registry=registry)
    return event, facet, base


def problems(event: dict[str, Any]) -> list[str]:
    """Everything wrong with ``event`` as an OpenLineage RunEvent (empty: valid)."""
    event_schema, parent_schema, facet_schema = _validators()
    found = [f"{list(e.path)}: {e.message}" for e in event_schema.iter_errors(event)]
    facets = event.get("run", {}).get("facets") or {}
    # the facet schema describes the facets object: {"parent": ParentRunFacet}
    found += [f"run.facets{list(e.path)}: {e.message}" for e in parent_schema.iter_errors(facets)]
    for name, facet in facets.items():
        if name != "parent":
            found += [
                f"run.facets.{name}{list(e.path)}: {e.message}"
                for e in facet_schema.iter_errors(facet)
            ]
    try:
        datetime.fromisoformat(str(event.get("eventTime")).replace("Z", "+00:00"))
    except ValueError:
        found.append(f"eventTime {event.get('eventTime')!r} is not an ISO date-time")
    runs = [event.get("run", {}).get("runId")]
    runs.append(
        ((event.get("run", {}).get("facets") or {}).get("parent") or {}).get("run", {}).get("runId")
    )
    for run_id in [r for r in runs if r is not None]:
        try:
            uuid.UUID(str(run_id))
        except ValueError:
            found.append(f"runId {run_id!r} is not a UUID")
    for name in ("producer", "schemaURL"):
        parts = urlsplit(str(event.get(name)))
        if not (parts.scheme and parts.netloc):
            found.append(f"{name} {event.get(name)!r} is not an absolute URI")
    return found
