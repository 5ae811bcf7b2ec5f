"""A worker's progress through its partitions: which fetched requests are done, and what to
commit for them. Pure.

Kafka's committed offset means "everything before this is done", so a partition commits
up to its first request whose result is not written yet. Requests done after that one
(results are written as tasks finish, out of order) ride along in the commit's metadata
(``done:`` and their offsets relative to the committed one, as ranges), so that whoever
owns the partition next, after a crash or a rebalance, skips them instead of executing
them again (``earlier``). The metadata is capped below the broker's limit
(``offset.metadata.max.bytes``, 4096 by default): a done request it cannot list is only
executed again, which at-least-once allows.

What must hold: an offset is committed only when it and every offset before it in its
partition are done; a request said done in the metadata had its result written (the
result write is acknowledged before the commit that names it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from aiokafka import TopicPartition

_DONE = "done:"
#: The metadata is cut before this many characters (the broker refuses over 4096).
MAX_METADATA = 3000

Commit = tuple[int, str]  # (offset, metadata)


def done_metadata(base: int, offsets: Iterable[int]) -> str:
    """The metadata naming ``offsets`` (all above ``base``) as done, as ranges relative
    to ``base``, cut at ``MAX_METADATA`` characters."""
    ranges: list[str] = []
    size = len(_DONE)
    ordered = sorted(offsets)
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        first, last = ordered[i] - base, ordered[j] - base
        text = str(first) if first == last else f"{first}-{last}"
        if size + len(text) + 1 > MAX_METADATA:
            break
        ranges.append(text)
        size += len(text) + 1
        i = j + 1
    return _DONE + ",".join(ranges) if ranges else ""


def done_offsets(base: int, metadata: str | None) -> set[int]:
    """The offsets a commit at ``base`` with ``metadata`` names as done (none if it is not
    such metadata: anything unreadable means only that those requests run again)."""
    if not metadata or not metadata.startswith(_DONE) or base < 0:
        return set()
    done: set[int] = set()
    for part in metadata[len(_DONE) :].split(","):
        first, _, last = part.partition("-")
        if not first.isdigit() or (last and not last.isdigit()):
            return set()
        low, high = int(first), int(last or first)
        if high < low or high - low > 100_000:
            return set()
        done.update(range(base + low, base + high + 1))
    return done


class Uncommitted:
    """The fetched requests whose offsets are not committed yet, per partition, and which
    of them have had their result written; and the ones an earlier owner said were done.

    Each partition's offsets are kept in ascending order (a request fetched below the
    highest one, after the consumer was sent back, re-sorts them), so finding and dropping
    the committable prefix only visits that prefix.
    """

    def __init__(self) -> None:
        self._written: dict[TopicPartition, dict[int, bool]] = {}
        self._earlier: dict[TopicPartition, set[int]] = {}
        self._sent: dict[TopicPartition, Commit] = {}

    def __len__(self) -> int:
        return sum(len(offsets) for offsets in self._written.values())

    def earlier(self, tp: TopicPartition, offsets: Iterable[int]) -> None:
        """Requests of ``tp`` a previous owner had done (read from its last commit)."""
        self._earlier.setdefault(tp, set()).update(offsets)

    def add(self, tp: TopicPartition, offset: int) -> bool:
        """Track a fetched request; whether to execute it: False if it is tracked already
        (fetched again) or an earlier owner had done it (then it counts as written)."""
        offsets = self._written.setdefault(tp, {})
        if offset in offsets:
            return False
        done = False
        earlier = self._earlier.get(tp)
        if earlier and offset in earlier:
            earlier.discard(offset)
            done = True
        in_order = not offsets or offset > next(reversed(offsets))
        offsets[offset] = done
        if not in_order:
            self._written[tp] = dict(sorted(offsets.items()))
        return not done

    def written(self, tp: TopicPartition, offset: int) -> None:
        offsets = self._written.get(tp)
        if offsets is not None and offset in offsets:  # else: the partition moved away
            offsets[offset] = True

    def commits(self) -> dict[TopicPartition, Commit]:
        """Per partition, the offset to commit and the metadata naming the requests done
        beyond it, where either changed since the last commit."""
        commits = {}
        for tp, offsets in self._written.items():
            if not offsets:
                continue
            base = next(iter(offsets))
            for offset, written in offsets.items():
                if not written:
                    break
                base = offset + 1
            beyond = [o for o, written in offsets.items() if written and o > base]
            beyond += [o for o in self._earlier.get(tp, ()) if o > base]
            commit = (base, done_metadata(base, beyond))
            if commit != self._sent.get(tp, (base, "")) or base > next(iter(offsets)):
                commits[tp] = commit
        return commits

    def committed(self, commits: Mapping[TopicPartition, Commit]) -> None:
        for tp, commit in commits.items():
            upto = commit[0]
            offsets = self._written.get(tp, {})
            while offsets and next(iter(offsets)) < upto:
                del offsets[next(iter(offsets))]
            earlier = self._earlier.get(tp)
            if earlier:
                self._earlier[tp] = {o for o in earlier if o >= upto}
            self._sent[tp] = commit

    def keep_only(self, partitions: Iterable[TopicPartition]) -> None:
        """Forget the partitions not assigned here any more: their next owner executes
        their uncommitted requests (but those the commits named as done)."""
        kept = set(partitions)
        for known in (self._written, self._earlier, self._sent):
            for tp in [tp for tp in known if tp not in kept]:
                del known[tp]
