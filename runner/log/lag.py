"""How far consumer groups are behind: a partition's end offset (``read_committed``: the
last stable offset) less the group's committed offset, with the metadata its last commit
carried.

Used by the backpressure monitor every second (``LagReader`` keeps its admin client and
its group-less consumer open) and by ``headwater status``. A partition a group never
committed counts from its beginning. The control processor commits with the number of
runs in progress in the partition as metadata (``runs_metadata``): what the router's
backpressure adds to the control lag, since those runs are work not yet done too.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from headwater.runner.log import kafka
from headwater.runner.settings import Settings

#: How long a topic's partition list is used before it is read again.
PARTITIONS_FOR = 30.0
_RUNS = "runs="


def runs_metadata(runs: int) -> str:
    """The commit metadata of a control partition with ``runs`` runs in progress."""
    return f"{_RUNS}{runs}"


def runs_in(metadata: str | None) -> int:
    """The runs in progress a control partition's commit metadata says (0: none said)."""
    if metadata and metadata.startswith(_RUNS) and metadata[len(_RUNS) :].isdigit():
        return int(metadata[len(_RUNS) :])
    return 0


@dataclass(frozen=True, slots=True)
class PartitionLag:
    lag: int
    metadata: str = ""


def lag_of(
    ends: Mapping[TopicPartition, int],
    starts: Mapping[TopicPartition, int],
    committed: Mapping[TopicPartition, Any],
) -> dict[TopicPartition, PartitionLag]:
    """Per partition of ``ends``: its lag against ``committed`` (``OffsetAndMetadata``;
    missing or -1: never committed, so counted from ``starts``)."""
    out = {}
    for tp, end in ends.items():
        meta = committed.get(tp)
        at = meta.offset if meta is not None and meta.offset >= 0 else starts.get(tp, 0)
        out[tp] = PartitionLag(max(0, end - at), (meta.metadata or "") if meta else "")
    return out


async def committed_offsets(
    settings: Settings, group: str, partitions: list[TopicPartition]
) -> dict[TopicPartition, Any]:
    """The group's committed ``OffsetAndMetadata`` for ``partitions`` (those it never
    committed are left out)."""
    admin = AIOKafkaAdminClient(**settings.kafka.client_options())
    await admin.start()
    try:
        found = await admin.list_consumer_group_offsets(group, partitions=partitions)
    finally:
        await admin.close()
    return {tp: meta for tp, meta in found.items() if meta.offset >= 0}


class LagReader:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: Any = None
        self._partitions: dict[str, tuple[float, list[int]]] = {}

    async def __aenter__(self) -> LagReader:
        admin = AIOKafkaAdminClient(**self._settings.kafka.client_options())
        consumer = kafka.consumer(self._settings, group=None)
        try:
            await admin.start()
            self._admin = admin
            await consumer.start()
            self._consumer = consumer
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
        if self._admin is not None:
            await self._admin.close()
        self._admin = self._consumer = None

    async def read(
        self, wanted: Iterable[tuple[str, str]]
    ) -> dict[tuple[str, str], dict[int, PartitionLag]]:
        """Per ``(group, topic)``: each of the topic's partitions with its lag (a topic
        that does not exist yet: none)."""
        assert self._admin is not None, "used outside its async with"
        wanted = list(wanted)
        tps = {}
        for group, topic in wanted:
            tps[(group, topic)] = [TopicPartition(topic, p) for p in await self._of(topic)]
        everything = sorted({tp for each in tps.values() for tp in each})
        if not everything:
            return {key: {} for key in wanted}
        ends = await self._consumer.end_offsets(everything)
        out: dict[tuple[str, str], dict[int, PartitionLag]] = {}
        starts: dict[TopicPartition, int] | None = None
        for (group, topic), partitions in tps.items():
            if not partitions:
                out[(group, topic)] = {}
                continue
            committed = await self._admin.list_consumer_group_offsets(group, partitions=partitions)
            if starts is None and any(
                committed.get(tp) is None or committed[tp].offset < 0 for tp in partitions
            ):
                starts = await self._consumer.beginning_offsets(everything)
            mine = {tp: ends[tp] for tp in partitions}
            lags = lag_of(mine, starts or {}, committed)
            out[(group, topic)] = {tp.partition: lag for tp, lag in lags.items()}
        return out

    async def _of(self, topic: str) -> list[int]:
        known = self._partitions.get(topic)
        if known is not None and time.monotonic() - known[0] < PARTITIONS_FOR:
            return known[1]
        assert self._admin is not None
        [described] = await self._admin.describe_topics([topic])
        partitions = (
            []
            if described.get("error_code")
            else sorted(p["partition"] for p in described.get("partitions", ()))
        )
        self._partitions[topic] = (time.monotonic(), partitions)
        return partitions
