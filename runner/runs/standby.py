"""Standby state (``HEADWATER_STANDBY``): warm copies of the control partitions this
process does not own, kept by following their changelog partitions into local stores, so
that a failover to this process reads only the changelog's last moments instead of all
of it.

What must hold: a standby store is written exactly as an owner's is (the same fold, the
same checkpoint after each fetched batch), so a restore cannot tell them apart and trusts
it by the same rules; a partition is followed only while this process does not own it
(``release`` closes its store before the owner's restore opens it, ``follow`` hands it
back when it is revoked); it reads ``read_committed``, so it never holds what an aborted
transaction wrote. A standby never changes the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiokafka import TopicPartition

from headwater.runner.errors import BadMessage
from headwater.runner.log import kafka
from headwater.runner.log.reader import FETCH_BYTES, topic_partitions
from headwater.runner.runs.store import Store, open_store
from headwater.runner.settings import Settings

log = logging.getLogger(__name__)

STAMP_EVERY = 60.0  # seconds between "up to date now" stamps of an idle standby store


class Standby:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._topic = settings.topics.runs
        self._owned: set[int] = set()
        self._stores: dict[int, Store] = {}
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()

    async def release(self, partition: int) -> None:
        """This process now owns ``partition``: stop following it, close its store."""
        async with self._lock:
            self._owned.add(partition)
            store = self._stores.pop(partition, None)
            if store is not None:
                store.close()
            self._changed.set()

    def follow(self, partition: int) -> None:
        """This process no longer owns ``partition``: follow it again."""
        self._owned.discard(partition)
        self._changed.set()

    async def run(self, stopping: asyncio.Event) -> None:
        """Follow until ``stopping``; a failure (Kafka away, a store that cannot be
        written) is logged and the following starts again: a standby never stops its
        process, and the stores it leaves are trusted only by their checkpoints."""
        while not stopping.is_set():
            try:
                await self._follow(stopping)
            except Exception as exc:  # noqa: BLE001 - said, then started again
                log.warning("standby stopped (%s: %s); starting again", type(exc).__name__, exc)
                await _wait(asyncio.Event(), stopping, 5.0)

    async def _follow(self, stopping: asyncio.Event) -> None:
        reader = kafka.consumer(self._settings, group=None, **FETCH_BYTES)
        await reader.start()
        said = False
        try:
            partitions: list[int] = []
            last_stamp = asyncio.get_running_loop().time()
            while not stopping.is_set():
                if not partitions:  # the topic may not exist yet
                    partitions = await topic_partitions(self._settings, self._topic)
                    if not partitions:
                        await _wait(self._changed, stopping, 1.0)
                        continue
                async with self._lock:
                    if self._changed.is_set() or not reader.assignment():
                        self._changed.clear()
                        await self._assign(reader, [p for p in partitions if p not in self._owned])
                        said = False
                if not self._stores:
                    await _wait(self._changed, stopping, 0.5)
                    continue
                batch = await reader.getmany(timeout_ms=500, max_records=5000)
                async with self._lock:
                    for tp, records in batch.items():
                        store = self._stores.get(tp.partition)
                        if store is not None and records:
                            _fold(store, records)
                    now = asyncio.get_running_loop().time()
                    if now - last_stamp > STAMP_EVERY:
                        last_stamp = now
                        for store in self._stores.values():
                            store.stamp()
                if not said and not batch and await self._caught_up(reader):
                    said = True
                    log.info(
                        "standby caught up: partitions %s",
                        ", ".join(map(str, sorted(self._stores))),
                    )
        finally:
            async with self._lock:
                for store in self._stores.values():
                    store.close()
                self._stores.clear()
            await reader.stop()

    async def _assign(self, reader: Any, wanted: list[int]) -> None:
        for partition in [p for p in self._stores if p not in wanted]:
            self._stores.pop(partition).close()
        for partition in wanted:
            if partition not in self._stores:
                folder = self._settings.state_dir
                self._stores[partition] = open_store(folder, self._topic, partition)
        tps = [TopicPartition(self._topic, p) for p in sorted(self._stores)]
        reader.assign(tps)
        if tps:
            beginnings = await reader.beginning_offsets(tps)
            ends = await reader.end_offsets(tps)
        for tp in tps:
            store = self._stores[tp.partition]
            at = store.checkpoint
            if at is None or not beginnings[tp] <= at <= ends[tp]:
                if at is not None:
                    store.clear()
                reader.seek(tp, beginnings[tp])
                store.batch().commit(beginnings[tp])  # empty, and up to date at the start
            else:
                reader.seek(tp, at)

    async def _caught_up(self, reader: Any) -> bool:
        tps = [TopicPartition(self._topic, p) for p in self._stores]
        ends = await reader.end_offsets(tps)
        for tp in tps:
            if await reader.position(tp) < ends[tp]:
                return False
        return True


def _fold(store: Store, records: list[Any]) -> None:
    batch = store.batch()
    for record in records:
        # An unreadable record: the owner's restore sends it to the DLQ and deletes it.
        with contextlib.suppress(BadMessage):
            batch.fold(record.key, record.value)
    batch.commit(records[-1].offset + 1)


async def _wait(changed: asyncio.Event, stopping: asyncio.Event, seconds: float) -> None:
    waits = [asyncio.ensure_future(changed.wait()), asyncio.ensure_future(stopping.wait())]
    try:
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
