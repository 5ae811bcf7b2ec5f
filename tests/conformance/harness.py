"""The shared behaviour suite's view of a source (Redpanda Connect's ``StreamTests`` idea).

Each source under test implements ``SourceHarness``: how to create its entities, how to
publish test messages (``{"tag": ..., "seq": n}`` payloads, optionally with an ordering
key), which ``headwater dev`` flags bridge it, how to find a test payload in a bridged
event, how to publish malformed input and check where it went, and how to read what is
still waiting at the source. ``test_bridges.py`` runs the same properties on every one.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from headwater.runner.envelope import CloudEvent
from headwater.runner.settings import Settings
from tests.servers.services import BackgroundServer

Message = tuple[int, str | None]  # (seq, ordering key)


class SourceHarness(abc.ABC):
    kind: str
    #: the server to restart under the bridge; None where the bridge itself is the server
    server: BackgroundServer | None = None

    def __init__(self, tag: str, workdir: Path, *, ordered: bool = False) -> None:
        self.tag = tag
        self.workdir = workdir
        self.ordered = ordered

    @abc.abstractmethod
    async def setup(self) -> None:
        """Create the queue/subscription/folder this test uses (also after a restart)."""

    @abc.abstractmethod
    def dev_args(self) -> list[str]: ...

    def dev_env(self) -> dict[str, str]:
        return {}

    @abc.abstractmethod
    async def publish(self, messages: Sequence[Message]) -> None:
        """Publish test messages in order; returns once the source accepted them."""

    def payload(self, event: CloudEvent) -> dict[str, Any] | None:
        """The test payload carried by a bridged event, if the event is one of ours."""
        data = event.data
        body = data.get("message") if isinstance(data, dict) else None
        if isinstance(body, dict) and body.get("tag") == self.tag:
            return body
        return None

    @abc.abstractmethod
    async def publish_malformed(self) -> Any:
        """Publish input the bridge must refuse; returns what ``check_malformed`` needs."""

    @abc.abstractmethod
    async def check_malformed(self, handle: Any, settings: Settings) -> None:
        """Assert the malformed input was dead-lettered at the source or in ``hw.dlq``."""

    @abc.abstractmethod
    async def remaining(self) -> set[int]:
        """Seqs of test messages still waiting at the source (reads them for good)."""

    async def stop_source(self) -> None:
        """Take the source's server away (stop it)."""
        assert self.server is not None
        self.server.stop()

    async def start_source(self) -> None:
        """Bring it back; an in-memory server comes back empty, so entities are recreated."""
        assert self.server is not None
        self.server.start()
        await self.setup()

    async def settle_publishers(self) -> None:
        """Wait for publishers that retry on their own (the webhook's clients)."""
        return None

    def body(self, seq: int) -> dict[str, Any]:
        return {"tag": self.tag, "seq": seq}

    def accepted(self) -> set[int] | None:
        """Seqs the source confirmed to the publisher (webhook 202s); None if n/a."""
        return None
