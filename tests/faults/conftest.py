"""Fault tests: real ``headwater dev`` processes against real Kafka, fed what a careless or
hostile user would send. Each test says what was lost, doubled or stuck: counts of
completions, DLQ records with their reasons, whether the process is still alive."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from headwater.runner.settings import Settings
from tests.processes import HeadwaterProcess

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


def completions(records: list[Any]) -> list[dict[str, Any]]:
    return [orjson.loads(record.value) for record in records]


def by_trigger(records: list[Any]) -> dict[str, list[str]]:
    """Completion types per trigger event id (``data.trigger.id``)."""
    found: dict[str, list[str]] = {}
    for record in records:
        headers = dict(record.headers)
        data = orjson.loads(record.value)
        found.setdefault(data["trigger"]["id"], []).append(headers["ce_type"].decode())
    return found
