"""The benchmark pipelines' task: nothing, as fast as possible."""

from __future__ import annotations

from typing import Any


async def noop(ctx: Any) -> None:
    return None
