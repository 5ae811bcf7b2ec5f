"""Probes (``headwater.runner.probes``) against real servers: a local HTTP server, TCP
ports, a private moto server stopped and restarted, the Pub/Sub test server (pstest) and
the Service Bus test server. Nothing here sleeps to wait: it polls against a deadline."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import boto3
import pytest
from aiohttp import web
from google.cloud import pubsub_v1

from headwater.runner.flow.health import Health, parse_service
from headwater.runner.probes import Prober, Unhealthy, probe, scrub
from tests.conftest import AWS_REGION
from tests.servers.services import MotoServer, PubSubServer, ServiceBusServer

pytestmark = pytest.mark.integration
WITHIN = 2.0  # each probe's timeout
SLACK = 1.5  # seconds a failing probe may take beyond its timeout
Handler = Callable[[web.Request], Awaitable[web.Response]]


def free_port() -> int:
    with socket.socket() as probe_socket:
        probe_socket.bind(("127.0.0.1", 0))
        return int(probe_socket.getsockname()[1])


async def fails(text: str, env: dict[str, str] | None = None, within: float = WITHIN) -> str:
    """The error text of probing ``text``, which must fail within its timeout."""
    started = time.monotonic()
    with pytest.raises(Unhealthy) as caught:
        await probe(parse_service(text), env or {}, within)
    assert time.monotonic() - started < within + SLACK
    return str(caught.value)


# -- http and tcp ----------------------------------------------------------------------------


def answer(status: int) -> Handler:
    async def handler(_: web.Request) -> web.Response:
        return web.Response(status=status, text=str(status))

    return handler


class Site:
    """An aiohttp server on 127.0.0.1 that can be stopped and started again on its port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.never = asyncio.Event()
        app = web.Application()
        for path, status in (("/ok", 200), ("/busy", 503), ("/missing", 404)):
            app.router.add_get(path, answer(status))
        app.router.add_get("/moved", self._moved)
        app.router.add_get("/slow", self._slow)
        self._runner = web.AppRunner(app)

    async def _moved(self, _: web.Request) -> web.Response:
        raise web.HTTPFound("/ok")

    async def _slow(self, _: web.Request) -> web.Response:
        await self.never.wait()
        return web.Response(text="late")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def start(self) -> None:
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def stop(self) -> None:
        self.never.set()
        await self._runner.cleanup()


@pytest.fixture
async def site() -> AsyncIterator[Site]:
    server = Site()
    await server.start()
    yield server
    await server.stop()


async def test_http_is_healthy_below_400_and_unhealthy_otherwise(site: Site) -> None:
    await probe(parse_service(site.url("/ok")), {}, WITHIN)
    await probe(parse_service(site.url("/moved")), {}, WITHIN)
    assert "503" in await fails(site.url("/busy"))
    assert "404" in await fails(site.url("/missing"))
    assert await fails(site.url("/slow"), within=0.5) == "no answer within 0.5 s"


async def test_http_down_then_up_again(site: Site) -> None:
    await site.stop()
    assert "Cannot connect" in await fails(site.url("/ok"))
    again = Site()
    again.port = site.port
    await again.start()
    try:
        await probe(parse_service(again.url("/ok")), {}, WITHIN)
    finally:
        await again.stop()


async def test_tcp_is_healthy_while_the_port_accepts() -> None:
    server = await asyncio.start_server(lambda _r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        await probe(parse_service(f"tcp://127.0.0.1:{port}"), {}, WITHIN)
    assert f"cannot connect to 127.0.0.1:{port}" in await fails(f"tcp://127.0.0.1:{port}")
    assert "cannot connect" in await fails(f"tcp://127.0.0.1:{free_port()}")


async def test_the_prober_holds_a_service_while_down_and_lets_go_when_it_recovers(
    site: Site,
) -> None:
    """The whole loop: Health + Prober against a server stopped and started again."""
    spec = parse_service(site.url("/ok"))
    health = Health(time.monotonic, interval=0.2, unhealthy_after=2, timeout=WITHIN)
    health.watch(spec)
    stopping = asyncio.Event()
    runner = asyncio.create_task(Prober({}).run(health, stopping))
    try:
        await until(lambda: health.states()[spec.name]["state"] == "healthy")
        await site.stop()
        await until(lambda: health.unhealthy(spec.name) is not None)
        again = Site()
        again.port = site.port
        await again.start()
        try:
            await until(lambda: health.unhealthy(spec.name) is None)
        finally:
            await again.stop()
    finally:
        stopping.set()
        await asyncio.wait_for(runner, 5)
    kinds = [change.kind for change in health.changes()]
    assert kinds == ["service.unhealthy", "service.healthy"]


async def until(condition: Callable[[], bool], within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


# -- AWS (a private moto server) -------------------------------------------------------------


@pytest.fixture
def private_moto(tmp_path: Path) -> Iterator[MotoServer]:
    """A moto server of this test's own (own port, own state dir): stopping it leaves the
    session's shared server alone."""
    server = MotoServer(port=free_port(), state=tmp_path)
    server.start()
    yield server
    server.stop()


def aws(server: MotoServer) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": AWS_REGION,
        "AWS_ENDPOINT_URL": server.endpoint_url,
    }


def create(server: MotoServer, bucket: str, queue: str) -> str:
    """Create ``bucket`` and ``queue`` on ``server``; the queue's URL."""
    env = aws(server)
    options = {
        "region_name": AWS_REGION,
        "endpoint_url": env["AWS_ENDPOINT_URL"],
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing",
    }
    boto3.client("s3", **options).create_bucket(Bucket=bucket)
    return str(boto3.client("sqs", **options).create_queue(QueueName=queue)["QueueUrl"])


async def test_aws_probes_follow_moto_down_and_up(private_moto: MotoServer) -> None:
    bucket, queue = f"b-{uuid.uuid4().hex[:10]}", f"q-{uuid.uuid4().hex[:10]}"
    url = create(private_moto, bucket, queue)
    env = aws(private_moto)
    for text in (f"aws.s3:{bucket}", "aws.s3", f"aws.sqs:{queue}", f"aws.sqs:{url}", "aws.sqs"):
        await probe(parse_service(text), env, WITHIN)
    assert "404" in await fails("aws.s3:no-such-bucket-here", env)
    assert "NonExistentQueue" in await fails("aws.sqs:no-such-queue", env)

    private_moto.stop()
    for text in (f"aws.s3:{bucket}", f"aws.sqs:{queue}"):
        assert "Could not connect" in await fails(text, env)

    private_moto.start()  # memory only: it comes back empty
    await probe(parse_service("aws.s3"), env, WITHIN)
    assert "404" in await fails(f"aws.s3:{bucket}", env)
    create(private_moto, bucket, queue)
    await probe(parse_service(f"aws.s3:{bucket}"), env, WITHIN)
    await probe(parse_service(f"aws.sqs:{queue}"), env, WITHIN)


# -- Google Pub/Sub (pstest) -----------------------------------------------------------------


@pytest.fixture
def pubsub(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    server = PubSubServer()
    server.start()
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", server.emulator_host)  # for the test's client
    return {"PUBSUB_EMULATOR_HOST": server.emulator_host, "GOOGLE_CLOUD_PROJECT": "hw-probes"}


async def test_pubsub_probe_asks_for_the_topic(pubsub: dict[str, str]) -> None:
    topic = f"t-{uuid.uuid4().hex[:10]}"
    path = f"projects/hw-probes/topics/{topic}"
    pubsub_v1.PublisherClient().create_topic(name=path)
    for text in (f"gcp.pubsub:{path}", f"gcp.pubsub:{topic}", "gcp.pubsub"):
        await probe(parse_service(text), pubsub, WITHIN)
    assert "NotFound" in await fails("gcp.pubsub:projects/hw-probes/topics/none", pubsub)
    assert "GOOGLE_CLOUD_PROJECT" in await fails(f"gcp.pubsub:{topic}", {})


async def test_pubsub_probe_fails_in_time_when_nothing_listens() -> None:
    env = {"PUBSUB_EMULATOR_HOST": f"127.0.0.1:{free_port()}"}
    assert "no answer" not in await fails("gcp.pubsub:projects/hw-probes/topics/uploads", env)


# -- Azure Service Bus (the project's test server) -------------------------------------------


@pytest.fixture
def servicebus() -> dict[str, str]:
    server = ServiceBusServer()
    server.start()
    return {"HEADWATER_SERVICEBUS_CONNECTION": server.connection_string}


async def test_servicebus_probe_peeks_the_queue(servicebus: dict[str, str]) -> None:
    await probe(parse_service(f"azure.servicebus:q-{uuid.uuid4().hex[:10]}"), servicebus, WITHIN)
    await probe(parse_service("azure.servicebus"), servicebus, WITHIN)  # the namespace's port


async def test_servicebus_probe_takes_a_secret_reference(
    servicebus: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HW_TEST_SB", servicebus["HEADWATER_SERVICEBUS_CONNECTION"])
    env = {"HEADWATER_SERVICEBUS_CONNECTION": "${env:HW_TEST_SB}"}
    await probe(parse_service("azure.servicebus:orders"), env, WITHIN)


async def test_servicebus_probe_fails_in_time_without_quoting_the_key() -> None:
    key = "c2VjcmV0LWtleS10aGF0LW11c3Qtbm90LWxlYWs="
    connection = (
        f"Endpoint=sb://127.0.0.1:{free_port()};SharedAccessKeyName=k;SharedAccessKey={key};"
        "UseDevelopmentEmulator=true;"
    )
    env = {"HEADWATER_SERVICEBUS_CONNECTION": connection}
    for text in ("azure.servicebus:orders", "azure.servicebus"):
        assert key not in await fails(text, env)
    assert "no connection string" in await fails("azure.servicebus:orders", {})


def test_error_texts_are_scrubbed_of_keys() -> None:
    text = "failed: Endpoint=sb://x;SharedAccessKey=abc/def+=;AccountKey=zz sig=q1&k=v"
    assert scrub(text) == ("failed: Endpoint=sb://x;SharedAccessKey=***;AccountKey=*** sig=***&k=v")
    assert scrub("GET /x?token=s3cr3t-value failed", ["token=s3cr3t-value"]) == (
        "GET /x?*** failed"
    )
    assert scrub("a k in the text", ["k"]) == "a k in the text"  # too short to be a secret
