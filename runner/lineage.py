"""Lineage: each finished run's OpenLineage events on ``hw.lineage``, and optionally to
an HTTP endpoint (Marquez's API, or any OpenLineage HTTP backend).

``Lineage``: one consumer group (``lineage``) reads ``completions`` and writes, per run,
the RunEvents ``observe.lineage`` builds (COMPLETE/FAIL/ABORT of the pipeline's job, whose
START the control processor wrote when the run started, and START and end of each
task's), keyed by run id, each write awaited before the offsets are
committed; a completion read again after a crash writes the same events again (same run
ids: a lineage backend keeps the latest state of each run).

``LineageShipper``: another group (``lineage-http``) reads ``hw.lineage`` and POSTs each
event, in order, to ``<url>/api/v1/lineage`` (the OpenLineage HTTP transport's endpoint;
a URL that already ends with a path is used as it is), with ``Authorization: Bearer``
when an API key is given (both may be secret references). Offsets are committed only
past events the endpoint accepted: while it is down, answers 5xx/429/408 or times out,
the events wait in ``hw.lineage`` and are sent again with backoff (at-least-once, never
dropped); an event it refuses (another 4xx) goes to the DLQ with its answer.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson

from headwater.runner import metrics
from headwater.runner.flow.backoff import Retry, pause
from headwater.runner.log import kafka
from headwater.runner.log.records import dlq_record, record_origin
from headwater.runner.model.pipeline import Pipeline
from headwater.runner.observe.lineage import lineage_events
from headwater.runner.secrets import redact, resolve_embedded
from headwater.runner.settings import Settings

#: The OpenLineage HTTP transport's default endpoint, relative to the backend's URL.
ENDPOINT = "api/v1/lineage"
#: Seconds one POST may take.
POST_WITHIN = 10.0
#: Answers after which the same event is sent again later.
RETRY_STATUSES = frozenset({408, 425, 429})

log = logging.getLogger(__name__)


class Lineage:
    def __init__(self, settings: Settings, pipelines: Mapping[str, Pipeline]) -> None:
        self._settings = settings
        self._pipelines = pipelines

    async def run(self, stopping: asyncio.Event) -> None:
        topics = self._settings.topics
        consumer = kafka.consumer(self._settings, topics.completions, group=topics.group("lineage"))
        producer = kafka.producer(self._settings)
        async with kafka.started(consumer, producer):
            while not stopping.is_set():
                batch = await consumer.getmany(timeout_ms=500, max_records=500)
                sends = []
                for records in batch.values():
                    for record in records:
                        for event in self._events(record.value):
                            value = orjson.dumps(event)
                            key = event["run"]["runId"].encode()
                            sends.append(await producer.send(topics.lineage, value, key=key))
                await kafka.all_acknowledged(sends, self._settings.kafka.write_timeout)
                if batch:
                    offsets = {tp: records[-1].offset + 1 for tp, records in batch.items()}
                    await kafka.commit(consumer, offsets)

    def _events(self, value: bytes | None) -> list[dict[str, Any]]:
        try:
            completion = orjson.loads(value or b"")
            pipeline = self._pipelines.get(str(completion.get("pipeline")))
            outputs = {t.name: list(t.outputs) for t in pipeline.tasks} if pipeline else {}
            residency = {t.name: t.residency for t in pipeline.tasks} if pipeline else {}
            return lineage_events(completion, outputs, residency, start=False)
        except Exception as exc:  # noqa: BLE001 - a completion it cannot read: no lineage
            log.warning("lineage: a completion could not be turned into events (%s)", exc)
            return []


class Rejected(Exception):
    """The endpoint refused an event for good (a 4xx other than 408/425/429)."""


def endpoint_of(url: str) -> str:
    """Where events are POSTed: ``url`` + ``/api/v1/lineage``, unless it has a path."""
    parts = urllib.parse.urlsplit(url)
    if parts.path.strip("/"):
        return url
    return urllib.parse.urljoin(url.rstrip("/") + "/", ENDPOINT)


class LineageShipper:
    def __init__(self, settings: Settings, url: str, api_key: str | None = None) -> None:
        self._settings = settings
        self._url = url  # references: resolved at each send, never kept resolved
        self._api_key = api_key

    async def run(self, stopping: asyncio.Event) -> None:
        topics = self._settings.topics
        consumer = kafka.consumer(
            self._settings, topics.lineage, group=topics.group("lineage-http")
        )
        producer = kafka.producer(self._settings)
        retry = Retry()
        async with kafka.started(consumer, producer), aiohttp.ClientSession() as session:
            while not stopping.is_set():
                batch = await consumer.getmany(timeout_ms=500, max_records=200)
                for tp, records in batch.items():
                    for index, record in enumerate(records):
                        sent = await self._ship(session, producer, record, retry, stopping)
                        if not sent:  # stopping: what is not sent is read again next time
                            if index:
                                await kafka.commit(consumer, {tp: records[index - 1].offset + 1})
                            return
                    await kafka.commit(consumer, {tp: records[-1].offset + 1})

    async def _ship(
        self,
        session: aiohttp.ClientSession,
        producer: Any,
        record: Any,
        retry: Retry,
        stopping: asyncio.Event,
    ) -> bool:
        """POST one event until the endpoint takes or refuses it; False if stopping first."""
        while not stopping.is_set():
            try:
                await self._post(session, record.value or b"")
                retry.succeeded()
                return True
            except Rejected as exc:
                reason = f"lineage endpoint refused the event: {exc}"
                entry = dlq_record(reason, record_origin(record), record.value)
                await producer.send_and_wait(self._settings.topics.dlq, entry)
                metrics.DLQ_RECORDS.labels("lineage").inc()
                log.warning("%s (sent to the DLQ)", reason)
                return True
            except Exception as exc:  # noqa: BLE001 - down or failing: the event waits
                delay = retry.failed()
                if retry.failures in (1, 10) or retry.failures % 100 == 0:
                    log.warning(
                        "lineage endpoint not taking events (%s); retrying in %.1fs",
                        redact(str(exc)) or type(exc).__name__,
                        delay,
                    )
                await pause(stopping, delay)
        return False

    async def _post(self, session: aiohttp.ClientSession, body: bytes) -> None:
        url = endpoint_of(await asyncio.to_thread(resolve_embedded, self._url))
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            key = await asyncio.to_thread(resolve_embedded, self._api_key)
            headers["Authorization"] = f"Bearer {key}"
        timeout = aiohttp.ClientTimeout(total=POST_WITHIN)
        async with session.post(url, data=body, headers=headers, timeout=timeout) as response:
            if response.status < 300:
                return
            text = redact((await response.text())[:300])
            answer = f"HTTP {response.status}: {text}".strip()
            if response.status >= 500 or response.status in RETRY_STATUSES:
                raise ConnectionError(answer)
            raise Rejected(answer)
