"""Harnesses of the sources that need no cloud: the webhook and the drop folder."""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import socket
import time
from collections.abc import Sequence
from typing import Any

import aiohttp
import orjson

from headwater.runner.envelope import CloudEvent
from headwater.runner.settings import Settings
from tests.conformance.harness import Message, SourceHarness

TOKEN_VARIABLE = "HW_CONFORMANCE_WEBHOOK_TOKEN"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class WebhookHarness(SourceHarness):
    """The bridge is the server: publishing is an HTTP client that retries until it gets a
    202, as a real sender does; what the sender got a 202 for must be in the log."""

    kind = "webhook"
    RETRY_FOR = 120.0

    async def setup(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/events"
        self.token = f"conformance-{self.tag}"
        self._senders: list[asyncio.Task[None]] = []
        self._accepted: set[int] = set()

    def dev_args(self) -> list[str]:
        return [
            "--webhook",
            f"127.0.0.1:{self.port}",
            "--webhook-token",
            f"${{env:{TOKEN_VARIABLE}}}",
        ]

    def dev_env(self) -> dict[str, str]:
        return {TOKEN_VARIABLE: self.token}

    def headers(self, seq: int, key: str | None) -> dict[str, str]:
        headers = {
            "Authorization": f"Bearer {self.token}",
            "Content-Type": "application/json",
            "ce-specversion": "1.0",
            "ce-id": f"{self.tag}-{seq}",
            "ce-source": "/conformance",
            "ce-type": "conformance.webhook",
        }
        if key:
            headers["ce-partitionkey"] = key
        return headers

    async def publish(self, messages: Sequence[Message]) -> None:
        """Starts one sender that posts the messages in order, each until it is accepted."""
        self._senders.append(asyncio.create_task(self._send_all(list(messages))))

    async def _send_all(self, messages: list[Message]) -> None:
        async with aiohttp.ClientSession() as session:
            for seq, key in messages:
                deadline = time.monotonic() + self.RETRY_FOR
                while True:
                    try:
                        async with session.post(
                            self.url,
                            data=orjson.dumps(self.body(seq)),
                            headers=self.headers(seq, key),
                        ) as response:
                            if response.status == 202:
                                self._accepted.add(seq)
                                break
                    except aiohttp.ClientError:
                        pass  # the bridge is down or restarting: try again
                    assert time.monotonic() < deadline, f"webhook never accepted {seq}"
                    await asyncio.sleep(0.2)

    async def settle_publishers(self) -> None:
        await asyncio.gather(*self._senders)

    def accepted(self) -> set[int]:
        return set(self._accepted)

    def payload(self, event: CloudEvent) -> dict[str, Any] | None:
        data = event.data
        return data if isinstance(data, dict) and data.get("tag") == self.tag else None

    async def publish_malformed(self) -> Any:
        good = self.headers(0, None)
        plain = {"Authorization": good["Authorization"], "Content-Type": "application/json"}
        no_type = {k: v for k, v in good.items() if k != "ce-type"}
        cases = [
            (plain, b"{oops"),
            (no_type, b"{}"),
            ({"Content-Type": "application/json"}, b"{}"),
            (plain, io.BytesIO(b"[" + b"1," * 600_000 + b"1]")),
        ]
        replies = []
        async with aiohttp.ClientSession() as session:
            for headers, body in cases:
                async with session.post(self.url, data=body, headers=headers) as response:
                    replies.append((response.status, (await response.json())["error"]))
        return replies

    async def check_malformed(self, handle: Any, settings: Settings) -> None:
        statuses = [status for status, _ in handle]
        assert statuses == [400, 400, 401, 413], handle
        assert handle[0][1].startswith("message body is not valid JSON")
        assert handle[1][1] == "CloudEvent is missing required attribute(s): type"
        assert handle[2][1] == "missing or wrong bearer token"

    async def remaining(self) -> set[int]:
        return set()  # the webhook keeps nothing: unaccepted requests stay with the sender


class FileDropHarness(SourceHarness):
    kind = "filedrop"

    async def setup(self) -> None:
        self.folder = self.workdir / "drop"
        self.folder.mkdir(parents=True, exist_ok=True)

    def dev_args(self) -> list[str]:
        return ["--drop", str(self.folder)]

    def name(self, seq: int) -> str:
        return f"{self.tag}-{seq:04d}.json"

    async def publish(self, messages: Sequence[Message]) -> None:
        for seq, _ in messages:  # one folder is one key: files are ordered by name
            staging = self.folder / f".{self.name(seq)}.part"
            staging.write_bytes(orjson.dumps(self.body(seq)))
            os.replace(staging, self.folder / self.name(seq))

    def payload(self, event: CloudEvent) -> dict[str, Any] | None:
        name = event.data.get("name", "") if isinstance(event.data, dict) else ""
        if not name.startswith(f"{self.tag}-"):
            return None
        return {"tag": self.tag, "seq": int(name[len(self.tag) + 1 :].split(".")[0])}

    async def publish_malformed(self) -> Any:
        """What a folder can hold that is not a file to ingest: a folder, a broken link."""
        (self.folder / "not-a-file.json").mkdir()
        (self.folder / "dangling.json").symlink_to(self.folder / "missing-target")
        return None

    async def check_malformed(self, handle: Any, settings: Settings) -> None:
        assert (self.folder / "not-a-file.json").is_dir()
        assert (self.folder / "dangling.json").is_symlink()

    async def remaining(self) -> set[int]:
        return {
            int(p.name[len(self.tag) + 1 :].split(".")[0])
            for p in self.folder.glob(f"{self.tag}-*.json")
        }

    async def stop_source(self) -> None:
        """The folder disappears (unmounted, deleted)...

        At once: renamed away first, so the bridge, still moving files out of it, never
        races the removal (rmtree of a folder whose files the bridge is moving raced once in CI).
        """
        gone = self.folder.with_name(f"{self.folder.name}.gone")
        self.folder.rename(gone)
        shutil.rmtree(gone)

    async def start_source(self) -> None:
        """...and comes back."""
        self.folder.mkdir()
