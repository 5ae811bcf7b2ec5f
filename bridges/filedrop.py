"""Drop-folder source: a finished file in a local directory becomes an event.

A file is *finished* when its size and modification time have not changed for
``settle`` seconds (writers that are still copying are left alone). Hidden files
(``.name``) and folders are ignored. After Kafka acknowledged the event the file is
renamed into ``processed/<id>/`` (a folder per delivery, so a later file of the same name
never overwrites it; same filesystem, so the rename is atomic); until then it stays
where it was dropped, and a crash before the rename delivers it again with the same event
id (derived from path, size and mtime), which the run table deduplicates.

Files are delivered in name order and keyed by the folder, so one folder's events keep
their order in the log. Events: ``type: headwater.file.created``, ``subject:
file:///dropped/path``; ``data.path`` is where the file lives once ingested (in
``processed/``), ``data.dropped_path`` where it was dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

from headwater.bridges.base import Delivery
from headwater.bridges.mapping import json_body, mapper, plain_event
from headwater.runner.envelope import CloudEvent
from headwater.runner.errors import BadMessage, NotConnected

KIND = "filedrop"
PROCESSED = "processed"
_ID_NAMESPACE = uuid.UUID("5a0f4a6e-2b0c-4a57-8f3e-7d8c1e9b4c22")


@dataclass(slots=True)
class _Seen:
    size: int
    mtime_ns: int
    stable_since: float


class FileDropSource:
    def __init__(
        self,
        directory: str | Path,
        *,
        settle: float = 1.0,
        poll: float = 0.25,
        wait: float = 1.0,
    ) -> None:
        self.directory = Path(directory).resolve()
        self.processed = self.directory / PROCESSED
        self._settle = settle
        self._poll = poll
        self._wait = wait
        self._seen: dict[str, _Seen] = {}
        self._in_flight: set[str] = set()

    @property
    def name(self) -> str:
        return self.directory.as_uri()

    async def connect(self) -> None:
        if not self.directory.is_dir():
            raise NotConnected(f"drop folder {self.directory} does not exist")
        self.processed.mkdir(exist_ok=True)

    async def close(self) -> None:
        self._in_flight.clear()

    async def receive(self, max_messages: int) -> list[Delivery]:
        deadline = time.monotonic() + self._wait
        while True:
            deliveries = self._finished_files(max_messages)
            if deliveries or time.monotonic() >= deadline:
                return deliveries
            await asyncio.sleep(self._poll)

    def _finished_files(self, limit: int) -> list[Delivery]:
        now = time.monotonic()
        present: set[str] = set()
        ready: list[Delivery] = []
        try:
            entries = sorted(os.scandir(self.directory), key=lambda e: e.name)
        except OSError as exc:
            raise NotConnected(f"drop folder {self.directory}: {exc.strerror}") from exc
        for entry in entries:
            if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                continue
            present.add(entry.path)
            stat = entry.stat(follow_symlinks=False)
            seen = self._seen.get(entry.path)
            if seen is None or (seen.size, seen.mtime_ns) != (stat.st_size, stat.st_mtime_ns):
                self._seen[entry.path] = _Seen(stat.st_size, stat.st_mtime_ns, now)
                continue
            if entry.path in self._in_flight or now - seen.stable_since < self._settle:
                continue
            if len(ready) < limit:
                ready.append(self._delivery(entry.path, seen))
                self._in_flight.add(entry.path)
        for gone in self._seen.keys() - present:
            del self._seen[gone]
        return ready

    def _delivery(self, path: str, seen: _Seen) -> Delivery:
        identity = f"{path}\x00{seen.size}\x00{seen.mtime_ns}"
        message_id = str(uuid.uuid5(_ID_NAMESPACE, identity))
        body = {
            "dropped_path": path,
            "path": str(self._destination(path, message_id)),
            "size": seen.size,
            "mtime_ns": seen.mtime_ns,
        }
        return Delivery(
            kind=KIND,
            message_id=message_id,
            body=orjson.dumps(body),
            handle=path,
            origin=self.name,
            key=self.name,
        )

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        for delivery in deliveries:
            path = Path(delivery.handle)
            destination = self._destination(delivery.handle, delivery.message_id)
            try:
                destination.parent.mkdir(exist_ok=True)
            except OSError as exc:  # the drop folder itself went away: connect again
                raise NotConnected(f"drop folder {self.directory}: {exc.strerror}") from exc
            with contextlib.suppress(FileNotFoundError):  # removed by someone else meanwhile
                os.replace(path, destination)
            self._in_flight.discard(delivery.handle)
            self._seen.pop(delivery.handle, None)

    def _destination(self, path: str, message_id: str) -> Path:
        """Where a delivered file goes: a folder of its own per delivery, so a later file
        of the same name never overwrites one whose run may still read it."""
        return self.processed / message_id[:13] / Path(path).name

    async def nack(self, deliveries: Sequence[Delivery]) -> None:
        for delivery in deliveries:
            self._in_flight.discard(delivery.handle)


@mapper(KIND)
def map_file(delivery: Delivery) -> list[CloudEvent]:
    body = json_body(delivery)
    if not isinstance(body, dict) or "dropped_path" not in body:
        raise BadMessage("drop-folder delivery has no dropped_path")
    dropped = Path(body["dropped_path"])
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(body["mtime_ns"] / 1e9))
    data = {
        "path": body["path"],
        "dropped_path": str(dropped),
        "name": dropped.name,
        "size": body["size"],
    }
    return [
        plain_event(
            delivery,
            "headwater.file.created",
            delivery.origin,
            data,
            wrap=False,
            time=f"{stamp}Z",
            subject=dropped.as_uri(),
        )
    ]
