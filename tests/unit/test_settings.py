"""Settings from the environment: the dedup retention."""

from __future__ import annotations

import pytest

from headwater.runner.errors import ConfigError
from headwater.runner.settings import DEDUP_RETENTION, Settings


def test_the_dedup_retention_defaults_to_a_week_and_reads_durations() -> None:
    assert Settings.from_env({}).dedup_retention == DEDUP_RETENTION == 7 * 86400
    assert Settings.from_env({"HEADWATER_DEDUP_RETENTION": "2d"}).dedup_retention == 172800
    assert Settings.from_env({"HEADWATER_DEDUP_RETENTION": "90s"}).dedup_retention == 90


@pytest.mark.parametrize("value", ["soon", "0", "-5s"])
def test_a_dedup_retention_that_is_no_duration_is_refused_by_name(value: str) -> None:
    with pytest.raises(ConfigError, match="HEADWATER_DEDUP_RETENTION"):
        Settings.from_env({"HEADWATER_DEDUP_RETENTION": value})
