"""``http:`` tasks against a local HTTP server, through a real runner: a 503 is retried,
a 400 is not; a secret header (a reference resolved where it is used) reaches the server
and appears in no log, completion or DLQ record, even when the server echoes it back."""

from __future__ import annotations

import asyncio
import collections
import uuid
from collections.abc import AsyncIterator

import orjson
import pytest
from aiohttp import web

from headwater.runner.settings import Settings
from tests.conftest import Start
from tests.httpserver import serving
from tests.kafkatools import publish, read_all, read_topic

pytestmark = pytest.mark.integration


class Server:
    def __init__(self) -> None:
        self.calls: collections.Counter[str] = collections.Counter()
        self.headers: list[str] = []
        self.bodies: list[bytes] = []

    async def flaky(self, request: web.Request) -> web.Response:
        self.calls["flaky"] += 1
        self.headers.append(request.headers.get("Authorization", ""))
        self.bodies.append(await request.read())
        if self.calls["flaky"] <= 2:
            return web.Response(status=503, text="warming up")
        return web.json_response({"rows": 7, "you_sent": request.headers["Authorization"]})

    async def hang(self, request: web.Request) -> web.Response:
        self.calls["hang"] += 1
        await asyncio.sleep(3)  # past the task's timeout: the attempt gives up first
        return web.Response(text="too late")

    async def bad(self, request: web.Request) -> web.Response:
        self.calls["bad"] += 1
        return web.Response(status=400, text="no such report")


@pytest.fixture
async def server() -> AsyncIterator[tuple[Server, int]]:
    state = Server()
    app = web.Application()
    app.router.add_post("/flaky", state.flaky)
    app.router.add_get("/bad", state.bad)
    app.router.add_get("/hang", state.hang)
    async with serving(app) as port:
        yield state, port


async def test_http_tasks_retry_503_not_400_and_never_show_the_secret(
    settings: Settings, headwater_dev: Start, server: tuple[Server, int]
) -> None:
    state, port = server
    token = "tok-" + uuid.uuid4().hex
    pipeline = f"""\
name: calls
triggers:
  - type: test.http
tasks:
  flaky:
    http:
      url: http://127.0.0.1:{port}/flaky
      method: POST
      headers: {{Authorization: "Bearer ${{env:HW_TEST_TOKEN}}"}}
    retries: 3
    backoff: {{initial: 100ms, max: 200ms}}
  bad:
    http: {{url: "http://127.0.0.1:{port}/bad"}}
    retries: 3
    backoff: {{initial: 100ms, max: 200ms}}
  hung:
    http: {{url: "http://127.0.0.1:{port}/hang"}}
    timeout: 1s
    retries: 1
    backoff: {{initial: 100ms, max: 200ms}}
"""
    process = headwater_dev({"calls.yaml": pipeline}, env={"HW_TEST_TOKEN": token})
    await process.output_shows("headwater dev:")
    await publish(settings, "test.http", ["one"])
    [record] = await read_topic(settings, settings.topics.completions, lambda r: len(r) >= 1)
    completion = orjson.loads(record.value)
    # 503 twice then 200; 400 once; a server that never answers in time: both attempts
    assert state.calls == {"flaky": 3, "bad": 1, "hang": 2}
    assert state.headers == [f"Bearer {token}"] * 3  # the secret reached the server
    assert orjson.loads(state.bodies[0])["event"]["id"] == "one"  # the context, as JSON
    flaky, bad = completion["tasks"]["flaky"], completion["tasks"]["bad"]
    assert (flaky["status"], flaky["attempts"]) == ("succeeded", 3)
    assert flaky["output"] == {"rows": 7, "you_sent": "Bearer ***"}
    assert (bad["status"], bad["attempts"]) == ("failed", 1)
    assert "HTTP 400" in bad["error"] and "no such report" in bad["error"]
    hung = completion["tasks"]["hung"]
    assert (hung["status"], hung["attempts"], hung["error"]) == ("failed", 2, "timed out after 1s")
    process.stop()
    said = [process.output()]
    for topic in (settings.topics.completions, settings.topics.dlq, settings.topics.status):
        said += [
            bytes(r.value or b"").decode("utf-8", "replace")
            for r in await read_all(settings, topic)
        ]
    leaks = [text for text in said if token in text]
    assert leaks == []
