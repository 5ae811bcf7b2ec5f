"""Egress: the bytes a run's tasks moved out of the cloud (or region) that holds the
trigger's object, and what that is estimated to cost. Pure.

What counts: an object event (S3, GCS, Azure Blob, or any event whose ``data.size`` is a
byte count and whose subject or source names the cloud) is read once by each attempt of
each task that ran (all of a task's attempts count where its last one ran); those bytes
moved when the attempt ran outside the object's cloud, or in another region of it when
both regions are known. A worker's place is its route's
``cloud`` and ``region`` (the config's ``routes:``); a route that declares no cloud counts
as outside every cloud (on premises), so its bytes are egress. A local file moves nothing.
A batching or joined run counts the objects of all its events.

The cost is bytes / 10**9 * the source cloud's price per GB from the config's price table
(``egress: {prices: {aws: 0.09, ...}}``); without a price for that cloud, no cost is said.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from headwater.runner.runs.joins import JOIN_TYPE
from headwater.runner.runs.windows import BATCH_TYPE

#: The cloud of each bridge kind (``hwbridge``), when the subject does not say it.
_BRIDGE_CLOUDS = {"sqs": "aws", "pubsub": "gcp", "servicebus": "azure", "filedrop": "local"}
_AZURE_BLOB = re.compile(r"^https://[a-z0-9]{3,24}\.blob\.core\.windows\.net/", re.IGNORECASE)
#: Bytes in the GB that prices are given per (cloud providers bill decimal GB).
GB = 1_000_000_000
#: Where a worker ran when its route declares no cloud.
OUTSIDE = "outside"


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a trigger's objects are: their cloud, region (when known) and total size."""

    cloud: str
    region: str | None
    size: int


def origin_of(event: dict[str, Any]) -> Origin | None:
    """The objects a run's trigger is about, or None when it is about none."""
    if event.get("type") in (BATCH_TYPE, JOIN_TYPE):
        data = event.get("data")
        events = data.get("events") if isinstance(data, dict) else None
        found = [origin_of(e) for e in events if isinstance(e, dict)] if events else []
        known = [o for o in found if o is not None]
        if not known:
            return None
        first = known[0]
        same = all((o.cloud, o.region) == (first.cloud, first.region) for o in known)
        region = first.region if same else None
        return Origin(first.cloud, region, sum(o.size for o in known))
    data = event.get("data")
    size = data.get("size") if isinstance(data, dict) else None
    if isinstance(size, str) and size.isdigit():
        size = int(size)
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        return None
    cloud = _cloud_of(event)
    if cloud is None:
        return None
    region = data.get("region") if isinstance(data, dict) else None
    return Origin(cloud, region if isinstance(region, str) and region else None, size)


def _cloud_of(event: dict[str, Any]) -> str | None:
    subject, source = str(event.get("subject") or ""), str(event.get("source") or "")
    if subject.startswith("s3://") or source.startswith("arn:aws:s3"):
        return "aws"
    if subject.startswith("gs://") or source.startswith("//storage.googleapis.com"):
        return "gcp"
    if _AZURE_BLOB.match(subject):
        return "azure"
    if subject.startswith("file://"):
        return "local"
    return _BRIDGE_CLOUDS.get(str(event.get("hwbridge") or ""))


def moved(origin: Origin, ran_on: dict[str, Any] | None) -> bool:
    """Whether an attempt that ran at ``ran_on`` moved ``origin``'s bytes out."""
    if origin.cloud == "local":
        return False
    place = ran_on or {}
    cloud, region = place.get("cloud"), place.get("region")
    if not cloud:
        return True  # a worker outside any declared cloud: the bytes left it
    if cloud != origin.cloud:
        return True
    return bool(origin.region and region and region != origin.region)


def egress(
    event: dict[str, Any], tasks: dict[str, dict[str, Any]], prices: dict[str, float]
) -> dict[str, Any] | None:
    """A completion's ``egress``: total bytes moved and estimated cost, and one entry per
    task that moved any (``tasks``: task -> its ``attempts`` and ``ran_on``); None when
    the trigger is about no object."""
    origin = origin_of(event)
    if origin is None:
        return None
    price = prices.get(origin.cloud)
    moves, total = [], 0
    for name, task in tasks.items():
        attempts = task.get("attempts") or 0
        ran_on = task.get("ran_on")
        if not attempts or ran_on is None or not moved(origin, ran_on):
            continue  # never ran, or no worker said where (its attempts were lost)
        size = origin.size * attempts
        total += size
        place = ran_on
        moves.append(
            {
                "task": name,
                "bytes": size,
                "to": {
                    "cloud": place.get("cloud") or OUTSIDE,
                    "region": place.get("region"),
                    "route": place.get("route"),
                },
                "cost_usd": None if price is None else round(size / GB * price, 6),
            }
        )
    return {
        "from": {"cloud": origin.cloud, "region": origin.region},
        "object_bytes": origin.size,
        "bytes": total,
        "cost_usd": None if price is None else round(total / GB * price, 6),
        "moves": moves,
    }
