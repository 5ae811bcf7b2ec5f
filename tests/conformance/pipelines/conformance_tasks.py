"""The conformance pipeline's only task: it does nothing, quickly."""

from __future__ import annotations

from headwater.runner.tasks import TaskContext


async def noop(ctx: TaskContext) -> None:
    return None
