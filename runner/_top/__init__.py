"""``headwater``: what task authors import, ``from headwater import Retriable, TaskContext``.

This folder installs as the ``headwater`` package itself (``pyproject.toml``); the
runner is ``headwater.runner``, the bridges ``headwater.bridges``. Names are looked up
on first use, so importing ``headwater`` loads nothing of the runner.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Permanent", "Retriable", "TaskContext"]

if TYPE_CHECKING:
    from headwater.runner.tasks import Permanent as Permanent
    from headwater.runner.tasks import Retriable as Retriable
    from headwater.runner.tasks import TaskContext as TaskContext


def __getattr__(name: str) -> Any:
    if name in __all__:
        from headwater.runner import tasks

        return getattr(tasks, name)
    raise AttributeError(f"module 'headwater' has no attribute {name!r}")
