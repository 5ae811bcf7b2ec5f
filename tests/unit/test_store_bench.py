"""The store benchmark (``bench/stores.py``) at a tiny volume, so it cannot rot: each
store keeps every marker, refuses none that is absent, and expires exactly the markers of
the oldest buckets through the time-bucketed index."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import stores


@pytest.mark.parametrize("name", sorted(stores.STORES))
def test_each_store_keeps_finds_and_expires_markers(name: str, tmp_path: Path) -> None:
    markers = 5_000
    row = stores.measure(name, markers, str(tmp_path / name), lookups=2_000)
    oldest = stores.BUCKETS // 10
    assert row["expired"] == sum(stores.bucket_of(i, markers) < oldest for i in range(markers))
    assert row["disk_bytes_per_marker"] > 0 and row["peak_rss_mb"] > 0
