"""Lineage sent to an OpenLineage HTTP backend (Marquez's API shape), through a real
runner and a local HTTP server: while the backend answers 503 the events wait in
``hw.lineage`` and arrive afterwards, every one valid against the OpenLineage schema, a
START and an end per run and per task, with the API key from a secret reference (and the
key nowhere in the runner's output); an event the backend refuses (400) goes to the DLQ
and the others still arrive."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web

from headwater.runner.settings import Settings
from tests.conftest import Start
from tests.httpserver import serving
from tests.kafkatools import poll, publish, read_all, read_topic
from tests.lineage_schema import problems

pytestmark = pytest.mark.integration

PIPELINES = {
    "report.yaml": """\
name: report
triggers: [{type: test.lineage}]
tasks:
  read: {python: "lineage_tasks:ok"}
  write:
    python: "lineage_tasks:ok"
    needs: [read]
    outputs: [{namespace: "s3://reports", name: daily.json}]
""",
    "refused.yaml": """\
name: refused
triggers: [{type: test.lineage.refused}]
tasks:
  only: {python: "lineage_tasks:ok"}
""",
    "lineage_tasks.py": "def ok(ctx):\n    return {}\n",
}


@dataclass
class Backend:
    port: int = 0
    down_for: int = 3  # the first POSTs are answered 503
    calls: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    auth: set[str] = field(default_factory=set)


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    state = Backend()

    async def lineage(request: web.Request) -> web.Response:
        state.calls += 1
        if state.calls <= state.down_for:
            return web.Response(status=503, text="warming up")
        event = orjson.loads(await request.read())
        if str(event["job"]["name"]).startswith("refused"):
            return web.Response(status=400, text="job not allowed")
        state.events.append(event)
        state.auth.add(request.headers.get("Authorization", ""))
        return web.Response(status=201)

    app = web.Application()
    app.router.add_post("/api/v1/lineage", lineage)
    async with serving(app) as port:
        state.port = port
        yield state


async def test_lineage_reaches_the_backend_after_it_comes_up(
    settings: Settings, headwater_dev: Start, backend: Backend
) -> None:
    key = "lk-" + uuid.uuid4().hex
    process = headwater_dev(
        PIPELINES,
        env={
            "HEADWATER_LINEAGE_URL": f"http://127.0.0.1:{backend.port}",
            "HEADWATER_LINEAGE_API_KEY": "${env:LINEAGE_KEY}",
            "LINEAGE_KEY": key,
        },
    )
    await process.output_shows("headwater dev:")
    await publish(settings, "test.lineage", ["a", "b"])
    await publish(settings, "test.lineage.refused", ["x"])
    await read_topic(settings, settings.topics.completions, lambda r: len(r) >= 3)

    def pairs() -> dict[tuple[str, str], list[str]]:
        found: dict[tuple[str, str], list[str]] = {}
        for event in backend.events:
            job, run = event["job"], event["run"]
            found.setdefault((job["name"], run["runId"]), []).append(event["eventType"])
        return found

    async def arrived() -> tuple[bool, object]:
        done = [k for k, v in pairs().items() if "COMPLETE" in v and k[0] == "report"]
        return len(done) == 2, (backend.calls, pairs())

    await poll(arrived, 60, "the report runs' lineage never reached the backend")
    assert backend.calls > backend.down_for  # it was down first: they waited, then came
    for event in backend.events:
        assert problems(event) == [], event
    kinds = pairs()
    assert sorted(name for name, _ in kinds) == sorted(
        ["report", "report", "report.read", "report.read", "report.write", "report.write"]
    ), kinds
    assert all(sorted(set(v)) == ["COMPLETE", "START"] for v in kinds.values()), kinds
    assert backend.auth == {f"Bearer {key}"}
    ends = [e for e in backend.events if e["job"]["name"] == "report.write"]
    written = [(o["namespace"], o["name"]) for o in ends[-1]["outputs"]]
    assert written == [("s3://reports", "daily.json")]

    async def refused() -> tuple[bool, object]:
        reasons = [
            orjson.loads(r.value)["reason"] for r in await read_all(settings, settings.topics.dlq)
        ]
        hits = [r for r in reasons if "lineage endpoint refused the event: HTTP 400" in r]
        return len(hits) >= 2, reasons  # the refused run's START and COMPLETE (and its task's)

    await poll(refused, 30, "the refused events are not in the DLQ")
    await asyncio.sleep(0.5)
    assert key not in process.output()
