"""Durations as pipeline files and settings write them (``30s``, ``5m``, ``250ms``)."""

from __future__ import annotations

import re

_DURATION = re.compile(r"^(.*?)(ms|s|m|h|d)?$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: str | int | float) -> float:
    """Seconds from ``90``, ``1.5``, ``"250ms"``, ``"30s"``, ``"5m"``, ``"2h"``, ``"7d"``."""
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    text = value.strip()
    match = _DURATION.match(text)
    number, unit = (match.group(1), match.group(2)) if match else (text, "")
    scale = _UNITS.get(unit, 1.0)
    try:
        seconds = float(number) * scale
    except ValueError:
        raise ValueError(f"{value!r} is not a duration like 30s, 5m, 250ms") from None
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds
