"""Loaded by a ``headwater`` child process whose ``PYTHONPATH`` starts with this folder
(``tests/faults/test_stalled_process.py``): the process stalls itself once, as a VM paused
by its hypervisor or a stop-the-world pause would, at the worst moment for a processor
without fencing: right after its control consumer fetched a task's result and before it
acted on it. Armed once the file named by ``HW_TEST_STALL`` exists; it writes
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

    def _holds_a_result(batch: dict[Any, list[Any]]) -> bool:
        return any(
            tp.topic.endswith("control") and b'"kind":"task.finished"' in (record.value or b"")
            for tp, records in batch.items()
            for record in records
        )

    def _stall_if_armed(batch: dict[Any, list[Any]]) -> None:
        armed = _ARMED_BY is not None and Path(_ARMED_BY).exists()
        if armed and not _stalled and _holds_a_result(batch):
            _stalled.append(True)
            Path(f"{_ARMED_BY}.stalled").write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGSTOP)  # the whole process, heartbeats and all

    async def getmany(self: Any, *partitions: Any, **kwargs: Any) -> Any:
        batch = await _getmany(self, *partitions, **kwargs)
        _stall_if_armed(batch)
        return batch

    aiokafka.AIOKafkaConsumer.getmany = getmany  # type: ignore[method-assign]
