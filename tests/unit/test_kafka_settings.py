"""The client settings headwater applies to aiokafka, checked without a broker."""

from __future__ import annotations

from typing import Any

import aiokafka.producer.sender
from aiokafka.errors import CommitFailedError

from headwater.runner.log import kafka


def test_a_concurrent_transaction_is_retried_after_2_ms_not_20() -> None:
    # aiokafka has no setting for it: headwater sets the module constant its sender reads
    # at each retry. If an aiokafka release renames it, this says so.
    assert aiokafka.producer.sender.BACKOFF_OVERRIDE == kafka.CONCURRENT_TXN_RETRY_S == 0.002


class _Consumer:
    """A consumer whose commits land, or are refused because the group rebalanced while
    the batch was processed."""

    def __init__(self, rebalanced: bool) -> None:
        self.rebalanced = rebalanced
        self.asked: list[dict[Any, int]] = []

    async def commit(self, offsets: dict[Any, int]) -> None:
        self.asked.append(offsets)
        if self.rebalanced:
            raise CommitFailedError("the group has already rebalanced")


async def test_a_commit_refused_after_a_rebalance_is_reported_not_raised() -> None:
    consumer = _Consumer(rebalanced=True)
    assert await kafka.commit(consumer, {"tp": 10}) is False
    assert consumer.asked == [{"tp": 10}]


async def test_a_commit_that_lands_is_reported() -> None:
    consumer = _Consumer(rebalanced=False)
    assert await kafka.commit(consumer, {"tp": 10}) is True
    assert consumer.asked == [{"tp": 10}]
