"""Which request offsets a worker may commit when results finish out of order, and how the
requests done beyond that offset reach the partition's next owner (commit metadata)."""

from aiokafka import TopicPartition
from hypothesis import given
from hypothesis import strategies as st

from headwater.runner.log.progress import (
    MAX_METADATA,
    Uncommitted,
    done_metadata,
    done_offsets,
)

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
    # 10 still runs: A commits nothing new, but names 11 and 13 as done beyond it
    assert uncommitted.commits() == {A: (10, "done:1,3"), B: (6, "")}
    uncommitted.committed(uncommitted.commits())
    assert uncommitted.commits() == {}  # nothing changed since

    uncommitted.written(A, 10)
    assert uncommitted.commits() == {A: (12, "done:1")}
    uncommitted.committed({A: (12, "done:1")})
    assert len(uncommitted) == 2  # 12 (running) and 13 (written)
    assert uncommitted.commits() == {}

    uncommitted.written(A, 12)
    assert uncommitted.commits() == {A: (14, "")}


def test_a_request_fetched_again_is_not_executed_again() -> None:
    uncommitted = Uncommitted()
    assert uncommitted.add(A, 7)
    assert not uncommitted.add(A, 7)  # read again after a rebalance kept the partition here


def test_offsets_stay_in_order_when_the_consumer_is_sent_back() -> None:
    uncommitted = Uncommitted()
    uncommitted.add(A, 20)
    uncommitted.add(A, 18)
    uncommitted.written(A, 20)
    assert uncommitted.commits() == {A: (18, "done:2")}
    uncommitted.written(A, 18)
    assert uncommitted.commits() == {A: (21, "")}


def test_a_partition_that_moved_away_is_forgotten() -> None:
    uncommitted = Uncommitted()
    uncommitted.add(A, 1)
    uncommitted.add(B, 1)
    uncommitted.keep_only([B])
    uncommitted.written(A, 1)  # its task finished after the partition moved
    uncommitted.written(B, 1)
    assert uncommitted.commits() == {B: (2, "")}
    assert uncommitted.add(A, 1)  # back here later: executed as a new request


def test_the_next_owner_skips_what_the_previous_one_named_done() -> None:
    before = Uncommitted()
    for offset in range(100, 106):
        before.add(A, offset)
    for offset in (101, 102, 105):
        before.written(A, offset)
    [(base, metadata)] = before.commits().values()
    assert (base, metadata) == (100, "done:1-2,5")

    after = Uncommitted()  # the process died; the partition's next owner reads the commit
    after.earlier(A, done_offsets(base, metadata))
    executed = [offset for offset in range(100, 106) if after.add(A, offset)]
    assert executed == [100, 103, 104]
    for offset in executed[:1]:
        after.written(A, offset)
    # the skipped ones count as done: the prefix moves past 101 and 102
    assert after.commits() == {A: (103, "done:2")}


def test_done_offsets_not_fetched_yet_are_kept_in_the_next_commit() -> None:
    after = Uncommitted()
    after.earlier(A, {10, 11, 40})
    assert not after.add(A, 10)
    assert not after.add(A, 11)
    assert after.add(A, 12)  # 40 not fetched yet
    assert after.commits() == {A: (12, "done:28")}


def test_unreadable_metadata_means_nothing_is_skipped() -> None:
    for metadata in ("", "runs=5", "done:x", "done:5-2", "done:1-9999999", "done:1,-3", None):
        assert done_offsets(10, metadata) == set()


def test_metadata_stays_under_the_brokers_limit() -> None:
    metadata = done_metadata(0, range(1, 20_000, 2))  # 10k lone offsets
    assert len(metadata) <= MAX_METADATA
    named = done_offsets(0, metadata)
    assert named and named <= set(range(1, 20_000, 2))  # a prefix of them, nothing else


@given(st.integers(0, 10**12), st.sets(st.integers(1, 5_000), max_size=300))
def test_metadata_names_exactly_the_done_offsets(base: int, relative: set[int]) -> None:
    offsets = {base + r for r in relative}
    assert done_offsets(base, done_metadata(base, offsets)) == offsets
