"""The benchmark pipelines' tasks: next to nothing, as fast as possible.

``count_events`` returns how many events its run carried. ``noop_stamped`` notes when it
started (wall clock), by trigger event id, for the latency rows; it is a separate task so
that the other rows keep no per-run state. ``started`` returns that time as its output,
for runners in processes of their own.
"""

from __future__ import annotations

import time
from typing import Any

#: trigger event id -> when its task first started (``time.time()``)
started_at: dict[str, float] = {}


async def noop(ctx: Any) -> None:
    return None


async def count_events(ctx: Any) -> dict[str, int]:
    """How many events the run carried (the scale-out row of batched runs counts them)."""
    return {"events": len(ctx.events)}


async def noop_stamped(ctx: Any) -> None:
    started_at.setdefault(ctx.event["id"], time.time())


async def started(ctx: Any) -> dict[str, float]:
    """When it started (wall clock), as its output: read from the completion when the
    runner is a process of its own."""
    return {"started": time.time()}
