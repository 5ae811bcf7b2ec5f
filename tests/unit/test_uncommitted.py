"""Which request offsets a worker may commit when results finish out of order."""

from aiokafka import TopicPartition

from headwater.runner.worker import Uncommitted

A = TopicPartition("tasks", 0)
B = TopicPartition("tasks", 1)


def test_a_partition_commits_up_to_its_first_unwritten_request() -> None:
    uncommitted = Uncommitted()
    for offset in (10, 11, 12, 13):
        assert uncommitted.add(A, offset)
    uncommitted.add(B, 5)

    uncommitted.written(A, 11)
    uncommitted.written(A, 13)
    uncommitted.written(B, 5)
    assert uncommitted.committable() == {B: 6}  # 10 still runs: nothing of A yet

    uncommitted.written(A, 10)
    assert uncommitted.committable() == {A: 12, B: 6}
    uncommitted.committed({A: 12, B: 6})
    assert len(uncommitted) == 2  # 12 (running) and 13 (written)
    assert uncommitted.committable() == {}

    uncommitted.written(A, 12)
    assert uncommitted.committable() == {A: 14}


def test_a_request_fetched_again_is_not_executed_again() -> None:
    uncommitted = Uncommitted()
    assert uncommitted.add(A, 7)
    assert not uncommitted.add(A, 7)  # read again after a rebalance kept the partition here


def test_offsets_stay_in_order_when_the_consumer_is_sent_back() -> None:
    uncommitted = Uncommitted()
    uncommitted.add(A, 20)
    uncommitted.add(A, 18)
    uncommitted.written(A, 20)
    assert uncommitted.committable() == {}
    uncommitted.written(A, 18)
    assert uncommitted.committable() == {A: 21}


def test_a_partition_that_moved_away_is_forgotten() -> None:
    uncommitted = Uncommitted()
    uncommitted.add(A, 1)
    uncommitted.add(B, 1)
    uncommitted.keep_only([B])
    uncommitted.written(A, 1)  # its task finished after the partition moved
    uncommitted.written(B, 1)
    assert uncommitted.committable() == {B: 2}
    assert uncommitted.add(A, 1)  # back here later: executed as a new request
