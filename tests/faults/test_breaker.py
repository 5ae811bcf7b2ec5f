"""A route's circuit breaker against a real HTTP service that goes down and comes back.

The task calls a local HTTP service; the service is stopped (connections refused) while
runs arrive. The route's breaker opens after its failures, the worker pauses and holds
the route's requests (no attempt spent: attempts while down stay within failures +
concurrency - 1 + one per half-open probe), no run fails, and the requests' deadlines are
kept alive by the worker's hold notices (the task's timeout is shorter than the outage).
When the service is back, a probe closes the breaker and every run completes exactly once:
the service sees one call per run. Every transition is on ``hw.status``.

Before the breaker existed (1bde6ab), every run spent its attempts on the refused
connection while the service was down and failed.
"""

from __future__ import annotations

import asyncio
import collections
import os
import socket
import subprocess
import sys
from typing import Any

import orjson
import pytest
from aiohttp import web

from headwater.runner.settings import Settings
from tests.conftest import Start
from tests.kafkatools import by_trigger, pipeline_file, publish, read_all, read_topic

pytestmark = pytest.mark.integration

FAILURES, CONCURRENCY = 3, 2
ENV = {
    "HEADWATER_BREAKER_FAILURES": str(FAILURES),
    "HEADWATER_BREAKER_COOLDOWN": "2s",
    "HEADWATER_WORKER_CONCURRENCY": str(CONCURRENCY),
    "HEADWATER_DEDUP_RETENTION": "8s",  # the sweep that finds lost attempts: every 2 s
}
TASKS = """\
import json, pathlib, urllib.request

HERE = pathlib.Path(__file__).parent

def call(ctx):
    with (HERE / "attempts").open("a") as out:
        out.write(f"{ctx.event['id']} {ctx.attempt}\\n")
    url = f"{ctx.params['url']}?id={ctx.event['id']}"
    with urllib.request.urlopen(url, timeout=2) as response:
        return json.loads(response.read())
"""


class Service:
    """An HTTP service on a fixed loopback port that can be stopped and started again."""

    def __init__(self) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.calls: collections.Counter[str] = collections.Counter()
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.calls[request.query["id"]] += 1
        return web.json_response({"id": request.query["id"]})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/", self.handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def headwater_status(settings: Settings) -> str:
    """What ``headwater status`` prints for this test's topics."""
    env = {**os.environ, "HEADWATER_KAFKA": settings.kafka.bootstrap}
    env["HEADWATER_TOPIC_PREFIX"] = settings.topics.prefix
    done = subprocess.run(
        [sys.executable, "-m", "headwater.runner.cli.main", "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def status_types(records: list[Any]) -> list[str]:
    return [dict(r.headers)["ce_type"].decode() for r in records]


@pytest.mark.timeout(240)
async def test_the_breaker_opens_holds_the_runs_and_a_probe_closes_it(
    settings: Settings, headwater_dev: Start
) -> None:
    service = Service()
    await service.start()
    url = f"http://127.0.0.1:{service.port}/"
    task = (
        '{python: "breaker_tasks:call", retries: 20, timeout: 3s, '
        f'backoff: {{initial: 0.1, max: 0.5}}, with: {{url: "{url}"}}}}'
    )
    files = {
        "calls.yaml": pipeline_file("calls", "test.call", {"call": task}),
        "breaker_tasks.py": TASKS,
    }
    runner = headwater_dev(files, env=ENV)
    attempts_file = runner.log.parent / "pipelines" / "attempts"
    try:
        await runner.output_shows("headwater dev:")
        await publish(settings, "test.call", [f"up-{i}" for i in range(3)])
        await read_topic(settings, settings.topics.completions, lambda rs: len(rs) >= 3)
        before = len(attempts_file.read_text().splitlines())

        await service.stop()
        down = [f"down-{i}" for i in range(10)]
        await publish(settings, "test.call", down)
        await read_topic(
            settings,
            settings.topics.status,
            lambda rs: "headwater.breaker.opened" in status_types(rs),
            within=60,
        )
        await asyncio.sleep(12)  # longer than an attempt's lost-time (2 x 3 s + 3 s)
        during = status_types(await read_all(settings, settings.topics.status))
        attempts_down = len(attempts_file.read_text().splitlines()) - before
        probes = during.count("headwater.breaker.half_opened")
        bound = FAILURES + CONCURRENCY - 1 + probes
        assert attempts_down <= bound, (
            f"{attempts_down} attempts while the service was down; at most {bound} "
            f"({FAILURES} failures + {CONCURRENCY - 1} in flight + {probes} probes)"
        )
        print(f"attempts while down: {attempts_down} (bound {bound}, {probes} probes)")
        assert probes >= 1 and "headwater.flow.paused" in during, during
        shown = await asyncio.to_thread(headwater_status, settings)
        breakers = shown.split("services:")[0]
        assert "route default [" in breakers and "Connection refused" in breakers, shown
        assert ": open since" in breakers or ": half-open since" in breakers, shown
        prefix = settings.topics.prefix
        assert f"{prefix}router on {prefix}events: 0" in shown, shown
        completions = by_trigger(await read_all(settings, settings.topics.completions))
        assert not [e for e in down if e in completions], f"runs finished while down: {completions}"

        await service.start()

        def all_done(records: list[Any]) -> bool:
            return set(down) <= set(by_trigger(records))

        records = await read_topic(settings, settings.topics.completions, all_done, within=90)
        completions = by_trigger(records)
        for event in down:
            assert completions[event] == ["headwater.run.succeeded"], (event, completions)
            assert service.calls[event] == 1, (
                f"{event} reached the service {service.calls[event]} times"
            )
        after = status_types(await read_all(settings, settings.topics.status))
        breakers = [kind for kind in after if kind.startswith("headwater.breaker.")]
        flows = [kind for kind in after if kind.startswith("headwater.flow.")]
        assert breakers[-1] == "headwater.breaker.closed", after
        assert flows[-1] == "headwater.flow.resumed", after
        status = [orjson.loads(r.value) for r in await read_all(settings, settings.topics.status)]
        opened = next(s for s in status if s.get("state") == "open")
        assert opened["route"] == "default" and "Connection refused" in opened["reason"], opened
        assert "circuit breaker" in runner.output() and "breaker.opened" in runner.output()
    finally:
        await service.stop()
