"""The alert webhook, through a real runner and a local HTTP server: a failed run posts
one Slack-compatible alert with the run id and the reason, later failures of the same
pipeline within the rate limit are held back, and no secret appears in what is posted."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest
from aiohttp import web

from headwater.runner import alerts
from headwater.runner.settings import Settings
from tests.conftest import Start
from tests.httpserver import serving
from tests.kafkatools import publish, read_all, read_topic

pytestmark = pytest.mark.integration

PIPELINE = """\
name: fragile
triggers:
  - type: test.alert
tasks:
  load: {python: "alert_tasks:load", with: {token: "${env:HW_SECRET}"}}
"""
TASKS = """\
def load(ctx):
    raise ValueError(f"warehouse refused token {ctx.params['token']}")
"""


@pytest.fixture
async def hook() -> AsyncIterator[tuple[list[bytes], int]]:
    received: list[bytes] = []

    async def post(request: web.Request) -> web.Response:
        received.append(await request.read())
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", post)
    async with serving(app) as port:
        yield received, port


async def test_a_failed_run_posts_one_alert_without_secrets(
    settings: Settings, headwater_dev: Start, hook: tuple[list[bytes], int]
) -> None:
    received, port = hook
    secret, hook_token = "s-" + uuid.uuid4().hex, "h-" + uuid.uuid4().hex
    process = headwater_dev(
        {"fragile.yaml": PIPELINE, "alert_tasks.py": TASKS},
        env={
            "HW_SECRET": secret,
            "HW_HOOK": f"http://127.0.0.1:{port}/hook?token={hook_token}",
            "HEADWATER_ALERT_WEBHOOK": "${env:HW_HOOK}",
        },
    )
    await process.output_shows("headwater dev:")
    await publish(settings, "test.alert", ["one", "two", "three"])
    await read_topic(settings, settings.topics.completions, lambda r: len(r) >= 3)
    for _ in range(100):
        if received:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(2)  # the other two failures: held back by the rate limit
    assert len(received) == 1, received
    alert = orjson.loads(received[0])
    runs = {
        orjson.loads(r.value)["run_id"]
        for r in await read_all(settings, settings.topics.completions)
    }
    assert alert["headwater"]["kind"] == "run.failed"
    assert alert["headwater"]["run_id"] in runs and alert["headwater"]["run_id"] in alert["text"]
    assert "warehouse refused token ***" in alert["text"]
    process.stop()
    assert secret not in received[0].decode() and hook_token not in received[0].decode()
    assert secret not in process.output() and hook_token not in process.output()


async def test_a_dead_or_hung_webhook_drops_the_alert_and_goes_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(alerts, "POST_WITHIN", 0.5)
    held: list[asyncio.StreamWriter] = []

    async def never_answer(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # accepts the connection, never says a word

    hung = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    closed = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    dead_port = closed.sockets[0].getsockname()[1]
    closed.close()
    await closed.wait_closed()
    hung_port = hung.sockets[0].getsockname()[1]
    try:
        for port in (dead_port, hung_port):
            monkeypatch.setenv("HW_DEAD_HOOK", f"http://127.0.0.1:{port}/hook")
            sender = alerts.Alerts(Settings.from_env({}), "${env:HW_DEAD_HOOK}", every=0.0)
            async with aiohttp.ClientSession() as session:
                started = time.monotonic()
                await sender._send(session, "run.failed", "p", "run r1 failed", {"run_id": "r1"})
                assert time.monotonic() - started < 5
    finally:
        hung.close()
        for writer in held:
            writer.close()
    said = [r.getMessage() for r in caplog.records if "alert webhook" in r.getMessage()]
    assert said == [
        "alert webhook unreachable (ClientConnectorError); alert dropped",
        "alert webhook unreachable (TimeoutError); alert dropped",
    ], said
