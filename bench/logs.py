"""Where warnings go during a benchmark run: a log file beside the results, not stderr.

stderr carries only the progress lines. Whatever the libraries log at WARNING or above
(aiokafka's retries, for one) and whatever the benchmark's own processes print goes to
``bench/results/<run>.log``; the table says how many warnings there were.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("bench")


class _Counter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


def capture(path: Path) -> _Counter:
    """Send every WARNING-or-worse record to ``path`` (truncated); returns a counter."""
    counter = _Counter()
    handler = logging.FileHandler(path, mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler, counter], force=True)
    return counter
