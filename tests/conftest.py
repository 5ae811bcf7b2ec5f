"""Shared fixtures. Integration tests run against the real servers started by
``tests/servers/services.py`` (Kafka, moto); each test gets its own topic prefix and its
own queue and bucket names."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from headwater.runner.settings import Settings, Topics
from tests.processes import HeadwaterProcess
from tests.servers.services import KafkaServer, MotoServer, PubSubServer, ServiceBusServer

AWS_REGION = "us-east-1"


@pytest.fixture(scope="session")
def kafka_server() -> KafkaServer:
    server = KafkaServer()
    server.start()
    return server


@pytest.fixture(scope="session")
def moto_server() -> MotoServer:
    server = MotoServer()
    server.start()
    return server


@pytest.fixture(scope="session", autouse=True)
def cloud_servers(request: pytest.FixtureRequest) -> None:
    """The Pub/Sub and Service Bus test servers, started once when integration tests run."""
    if any(item.get_closest_marker("integration") for item in request.session.items):
        for server in (PubSubServer(), ServiceBusServer()):
            server.start()


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
def settings(kafka_server: KafkaServer, unique: str, tmp_path: Path) -> Settings:
    base = Settings.from_env({"HEADWATER_KAFKA": kafka_server.bootstrap})
    return Settings(
        kafka=base.kafka, topics=Topics(prefix=f"t{unique}."), state_root=tmp_path / "state"
    )


@pytest.fixture
def aws_env(moto_server: MotoServer) -> Iterator[dict[str, str]]:
    """Dummy credentials and the moto endpoint, for the test and its child processes."""
    values = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": AWS_REGION,
        "AWS_ENDPOINT_URL": moto_server.endpoint_url,
    }
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    yield values
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


Start = Callable[..., HeadwaterProcess]


@pytest.fixture
def headwater_dev(settings: Settings, tmp_path: Path) -> Iterator[Start]:
    """``start(files, env=..., args=...)``: writes ``files`` (name -> text) into a pipeline
    folder and starts ``headwater dev`` on it (with source flags ``args``); every process
    started is stopped after the test."""
    started: list[HeadwaterProcess] = []

    def start(
        files: dict[str, str], env: dict[str, str] | None = None, args: tuple[str, ...] = ()
    ) -> HeadwaterProcess:
        folder = tmp_path / "pipelines"
        folder.mkdir(exist_ok=True)
        for name, text in files.items():
            (folder / name).write_text(text)
        log = tmp_path / f"dev-{len(started)}.log"
        process = HeadwaterProcess(["dev", str(folder), *args], settings, log, env).start()
        started.append(process)
        return process

    yield start
    for process in started:
        if process.process is not None and process.process.poll() is None:
            process.stop()
