"""Loaded by a ``headwater`` child process whose ``PYTHONPATH`` starts with this folder
(``tests/faults/test_stalled_process.py``): the process stalls itself once, as a VM paused
by its hypervisor or a stop-the-world pause would, at the worst moment for a processor
without fencing: right after one of its consumers fetched a record and before it acted on
it. ``HW_TEST_STALL_ON`` says which: ``<topic suffix>:<bytes in the value>`` (default a
task's result on the control topic). Armed once the file named by ``HW_TEST_STALL``
exists; it writes
``<that file>.stalled`` just before it stops (SIGSTOP to itself; the test sends SIGCONT).
The process is otherwise the real one: the fault is at the client library's boundary."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

_ARMED_BY = os.environ.get("HW_TEST_STALL")

if _ARMED_BY:
    import aiokafka

    _getmany = aiokafka.AIOKafkaConsumer.getmany
    _stalled: list[bool] = []
    _suffix, _, _needle = os.environ.get(
        "HW_TEST_STALL_ON", 'control:"kind":"task.finished"'
    ).partition(":")

    def _holds_a_match(batch: dict[Any, list[Any]]) -> bool:
        return any(
            tp.topic.endswith(_suffix) and _needle.encode() in (record.value or b"")
            for tp, records in batch.items()
            for record in records
        )

    def _stall_if_armed(batch: dict[Any, list[Any]]) -> None:
        armed = _ARMED_BY is not None and Path(_ARMED_BY).exists()
        if armed and not _stalled and _holds_a_match(batch):
            _stalled.append(True)
            Path(f"{_ARMED_BY}.stalled").write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGSTOP)  # the whole process, heartbeats and all

    async def getmany(self: Any, *partitions: Any, **kwargs: Any) -> Any:
        batch = await _getmany(self, *partitions, **kwargs)
        _stall_if_armed(batch)
        return batch

    aiokafka.AIOKafkaConsumer.getmany = getmany  # type: ignore[method-assign]

    import asyncio
    import sys

    def _dump_tasks(_signum: int, _frame: Any) -> None:
        """SIGUSR1: every asyncio task's stack to stderr (asked for when a member is missing)."""
        try:
            tasks = asyncio.all_tasks()
        except RuntimeError:
            return
        for task in tasks:
            print(f"--- {task.get_name()}", file=sys.stderr)
            awaited: Any = task.get_coro()
            while awaited is not None:  # the whole await chain, not only the top frame
                frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "ag_frame", None)
                if frame is not None:
                    code = frame.f_code
                    print(f"  {code.co_filename}:{frame.f_lineno} {code.co_name}", file=sys.stderr)
                awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "ag_await", None)
        sys.stderr.flush()

    signal.signal(signal.SIGUSR1, _dump_tasks)
