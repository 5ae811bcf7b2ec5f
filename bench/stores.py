"""``make bench-stores``: the embedded stores a control partition's finished-run markers
could live in (issue 11), measured on this machine with the markers' own workload.

A marker says "this run id finished; refuse it again until the dedup retention ends".
The workload, per store, each in a fresh child process (so peak RSS is the store's own):

- **write**: N markers in batches of 2,000 (a control transaction's batch), each written
  twice, as the design would: ``m<run id> -> bucket`` (the lookup) and
  ``x<bucket><run id> -> ''`` (the expiry index: time-bucketed keys, so expiry is a
  range scan of the oldest buckets, work proportional to what expires);
- **hit / miss**: 200,000 lookups of random present ids, then of absent ids (a new
  trigger is almost always a miss; a redelivered one is a hit);
- **expire**: the oldest tenth of the buckets removed through the index;
- **disk**: bytes under the store's directory after a flush, per marker;
- **peak RSS** of the child (``ru_maxrss``) after all of it.

Nothing is synced per batch in either store: the changelog is the truth and a store is
trusted only up to the changelog offset it checkpointed after a flush (the design).
Run ids are shaped like headwater's (``<pipeline>:<26-char ULID-like id>``).

    python -m bench.stores [--markers 1000000] [--stores rocksdict,lmdb]

Prints one line per store and writes ``bench/results/stores.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BATCH = 2_000
LOOKUPS = 200_000
BUCKETS = 168  # a week of hourly buckets
RESULTS = Path(__file__).parent / "results" / "stores.json"


def run_id(i: int) -> bytes:
    return f"pipeline-{i % 100:02d}:{i:026d}".encode()


def bucket_of(i: int, markers: int) -> int:
    return i * BUCKETS // markers


class RocksStore:
    def __init__(self, path: str) -> None:
        from rocksdict import BlockBasedOptions, Cache, Options, Rdict

        options = Options(raw_mode=True)
        options.create_if_missing(True)
        table = BlockBasedOptions()
        table.set_block_cache(Cache(32 * 1024 * 1024))
        table.set_bloom_filter(10, False)
        options.set_block_based_table_factory(table)
        options.set_write_buffer_size(16 * 1024 * 1024)
        options.set_max_write_buffer_number(2)
        self._db = Rdict(path, options=options)

    def write(self, pairs: list[tuple[bytes, bytes]]) -> None:
        from rocksdict import WriteBatch

        batch = WriteBatch(raw_mode=True)
        for key, value in pairs:
            batch.put(key, value)
        self._db.write(batch)

    def get(self, key: bytes) -> bytes | None:
        value: bytes | None = self._db.get(key)
        return value

    def expire_below(self, bucket: int) -> int:
        from rocksdict import WriteBatch

        end = b"x" + bucket.to_bytes(8, "big")
        batch, count = WriteBatch(raw_mode=True), 0
        for key in self._db.keys(from_key=b"x"):
            if key >= end:
                break
            batch.delete(key)
            batch.delete(b"m" + key[9:])
            count += 1
            if count % BATCH == 0:  # bounded batches: expiring a week's bucket is not one write
                self._db.write(batch)
                batch = WriteBatch(raw_mode=True)
        self._db.write(batch)
        return count

    def flush(self) -> None:
        self._db.flush()

    def close(self) -> None:
        self._db.close()


class LmdbStore:
    def __init__(self, path: str) -> None:
        import lmdb

        self._env = lmdb.open(path, map_size=64 * 1024**3, sync=False, metasync=False)

    def write(self, pairs: list[tuple[bytes, bytes]]) -> None:
        with self._env.begin(write=True) as txn:
            for key, value in pairs:
                txn.put(key, value)

    def get(self, key: bytes) -> bytes | None:
        with self._env.begin() as txn:
            value: bytes | None = txn.get(key)
            return value

    def expire_below(self, bucket: int) -> int:
        end = b"x" + bucket.to_bytes(8, "big")
        count = 0
        with self._env.begin(write=True) as txn:
            cursor = txn.cursor()
            if cursor.set_range(b"x"):
                while cursor.key() < end:
                    txn.delete(b"m" + cursor.key()[9:])
                    count += 1
                    if not cursor.delete():
                        break
        return count

    def flush(self) -> None:
        self._env.sync(True)

    def close(self) -> None:
        self._env.close()


STORES: dict[str, Any] = {"rocksdict": RocksStore, "lmdb": LmdbStore}


def measure(name: str, markers: int, path: str, lookups: int = LOOKUPS) -> dict[str, Any]:
    """One store's figures, in this process (the child)."""
    store = STORES[name](path)
    started = time.perf_counter()
    for first in range(0, markers, BATCH):
        pairs = []
        for i in range(first, min(first + BATCH, markers)):
            bucket = bucket_of(i, markers).to_bytes(8, "big")
            pairs.append((b"m" + run_id(i), bucket))
            pairs.append((b"x" + bucket + run_id(i), b""))
        store.write(pairs)
    store.flush()
    write_s = time.perf_counter() - started

    rng = random.Random(7)
    present = [b"m" + run_id(rng.randrange(markers)) for _ in range(lookups)]
    absent = [b"m" + run_id(markers + rng.randrange(markers)) for _ in range(lookups)]
    started = time.perf_counter()
    hits = sum(store.get(key) is not None for key in present)
    hit_s = time.perf_counter() - started
    started = time.perf_counter()
    misses = sum(store.get(key) is None for key in absent)
    miss_s = time.perf_counter() - started
    assert hits == lookups and misses == lookups, (hits, misses)

    started = time.perf_counter()
    expired = store.expire_below(BUCKETS // 10)
    expire_s = time.perf_counter() - started
    store.flush()
    store.close()
    disk = sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
    return {
        "store": name,
        "markers": markers,
        "write_per_s": markers / write_s,
        "hit_per_s": lookups / hit_s,
        "miss_per_s": lookups / miss_s,
        "expired": expired,
        "expire_per_s": expired / expire_s if expire_s else 0.0,
        "disk_bytes_per_marker": disk / markers,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markers", type=int, default=1_000_000)
    parser.add_argument("--stores", default="rocksdict,lmdb")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.markers, args.path)))
        return
    rows = []
    for name in args.stores.split(","):
        folder = tempfile.mkdtemp(prefix=f"hw-store-{name}-")
        try:
            out = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "bench.stores",
                    "--child",
                    name,
                    "--path",
                    folder,
                    "--markers",
                    str(args.markers),
                ],
                check=True,
                capture_output=True,
                text=True,
                env={**os.environ},
            ).stdout
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        row = json.loads(out.strip().splitlines()[-1])
        rows.append(row)
        print(
            f"{name:10} {row['markers']:>10,} markers  write {row['write_per_s']:>9,.0f}/s  "
            f"hit {row['hit_per_s']:>9,.0f}/s  miss {row['miss_per_s']:>9,.0f}/s  "
            f"expire {row['expire_per_s']:>9,.0f}/s  disk {row['disk_bytes_per_marker']:.0f} B"
            f"/marker  peak RSS {row['peak_rss_mb']:.0f} MB"
        )
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
