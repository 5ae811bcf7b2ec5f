"""Alerts: failed runs, DLQ records and breakers opening, posted to a webhook.

One consumer group (``alerts``) reads ``completions``, ``dlq`` and ``status``, so each
alert is sent once across processes (by the process of the router role that owns the
partition). The webhook gets Slack-compatible JSON (``{"text": ...}``, plus the fields
as ``headwater``); its URL is a secret reference (``HEADWATER_ALERT_WEBHOOK``), resolved
when posting, and every text is redacted. Rate-limited per kind and subject: the first
alert of a kind for a pipeline (or route) goes out at once, the next ones at most every
``HEADWATER_ALERT_EVERY`` (default 60 s), saying how many were held back meanwhile.
A post that fails is logged and dropped (an alert is not worth stopping the stream).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from headwater.runner.log import kafka
from headwater.runner.secrets import redact_value, resolve_embedded
from headwater.runner.settings import Settings

log = logging.getLogger(__name__)

POST_WITHIN = 10.0
#: Records logged this long before the alerts component started raise no alert.
STALE_AFTER = 60.0


@dataclass
class Throttle:
    """Per (kind, subject): at most one alert every ``every`` seconds; the rest counted."""

    every: float
    sent: dict[tuple[str, str], float] = field(default_factory=dict)
    held: dict[tuple[str, str], int] = field(default_factory=dict)

    def allow(self, kind: str, subject: str, now: float) -> tuple[bool, int]:
        """Whether to send now, and how many were held back since the last one sent."""
        key = (kind, subject)
        last = self.sent.get(key)
        if last is not None and now - last < self.every:
            self.held[key] = self.held.get(key, 0) + 1
            return False, 0
        self.sent[key] = now
        return True, self.held.pop(key, 0)


def alert_of(topic: str, topics: Any, record: Any) -> tuple[str, str, str, dict[str, Any]] | None:
    """(kind, subject, text, fields) of a record worth an alert, else ``None``."""
    try:
        value = orjson.loads(record.value or b"")
    except orjson.JSONDecodeError:
        return None
    if not isinstance(value, dict):
        return None
    if topic == topics.completions and value.get("status") == "failed":
        pipeline = str(value.get("pipeline"))
        error = str(value.get("error") or "no reason given")
        text = f"run {value.get('run_id')} of pipeline {pipeline} failed: {error}"
        fields = {"run_id": value.get("run_id"), "pipeline": pipeline, "reason": error}
        return "run.failed", pipeline, text, fields
    if topic == topics.dlq:
        origin = value.get("origin") or {}
        if isinstance(origin, dict) and origin.get("component") == "control":
            return None  # a failed run's record: alerted as run.failed already
        where = origin.get("source") or origin.get("topic") or "?"
        text = f"DLQ record from {where}: {value.get('reason')}"
        return "dlq", str(where), text, {"reason": value.get("reason"), "origin": origin}
    headers = dict(record.headers or ())
    if topic == topics.status and headers.get("ce_type") == b"headwater.breaker.opened":
        scope = str(headers.get("ce_subject", b"").decode() or value.get("route"))
        reason = value.get("reason") or ""
        text = f"circuit breaker opened: {scope}: {reason}"
        return "breaker.opened", scope, text, {"scope": scope, "reason": reason}
    return None


class Alerts:
    def __init__(
        self,
        settings: Settings,
        webhook: str,
        every: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._webhook = webhook
        self._throttle = Throttle(every)
        self._clock = clock

    async def run(self, stopping: asyncio.Event) -> None:
        topics = self._settings.topics
        consumer = kafka.consumer(
            self._settings,
            topics.completions,
            topics.dlq,
            topics.status,
            group=topics.group("alerts"),
        )
        # A new group reads from the beginning: what is older than a minute before this
        # component started is history, not news.
        since_ms = (time.time() - STALE_AFTER) * 1000
        async with kafka.started(consumer), aiohttp.ClientSession() as session:
            while not stopping.is_set():
                batch = await consumer.getmany(timeout_ms=500, max_records=500)
                for tp, records in batch.items():
                    for record in records:
                        if record.timestamp < since_ms:
                            continue
                        found = alert_of(tp.topic, topics, record)
                        if found is not None:
                            await self._send(session, *found)
                if batch:
                    await kafka.commit(
                        consumer, {tp: records[-1].offset + 1 for tp, records in batch.items()}
                    )

    async def _send(
        self, session: aiohttp.ClientSession, kind: str, subject: str, text: str, fields: Any
    ) -> None:
        allowed, held = self._throttle.allow(kind, subject, self._clock())
        if not allowed:
            return
        if held:
            text += f" ({held} more like it held back)"
        payload = redact_value(
            {"text": f"headwater: {text}", "headwater": {"kind": kind, **fields}}
        )
        try:
            url = resolve_embedded(self._webhook)
            async with session.post(
                url, json=payload, timeout=aiohttp.ClientTimeout(total=POST_WITHIN)
            ) as response:
                if response.status >= 300:
                    log.warning("alert webhook answered %d; alert dropped", response.status)
        except Exception as exc:  # noqa: BLE001 - an alert never stops the stream
            log.warning("alert webhook unreachable (%s); alert dropped", type(exc).__name__)
