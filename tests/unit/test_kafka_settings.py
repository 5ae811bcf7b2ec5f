"""The client settings headwater applies to aiokafka, checked without a broker."""

from __future__ import annotations

from typing import Any

import aiokafka.producer.sender
from aiokafka.errors import CommitFailedError

from headwater.runner import kafka


def test_a_concurrent_transaction_is_retried_after_2_ms_not_20() -> None:
    # aiokafka has no setting for it: headwater sets the module constant its sender reads
    # at each retry. If an aiokafka release renames it, this says so.
    assert aiokafka.producer.sender.BACKOFF_OVERRIDE == kafka.CONCURRENT_TXN_RETRY_S == 0.002


class _RebalancedConsumer:
    """A consumer whose group rebalanced while the batch was processed."""

    def __init__(self) -> None:
        self.asked: list[dict[Any, int]] = []

    async def commit(self, offsets: dict[Any, int]) -> None:
        self.asked.append(offsets)
        raise CommitFailedError("the group has already rebalanced")


class _Consumer:
    def __init__(self) -> None:
        self.committed: list[dict[Any, int]] = []

    async def commit(self, offsets: dict[Any, int]) -> None:
        self.committed.append(offsets)


async def test_a_commit_refused_after_a_rebalance_is_reported_not_raised() -> None:
    consumer = _RebalancedConsumer()
    assert await kafka.commit(consumer, {"tp": 10}) is False
    assert consumer.asked == [{"tp": 10}]


async def test_a_commit_that_lands_is_reported() -> None:
    consumer = _Consumer()
    assert await kafka.commit(consumer, {"tp": 10}) is True
    assert consumer.committed == [{"tp": 10}]
