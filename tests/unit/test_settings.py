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


def test_task_timeout_and_output_limit_have_defaults_and_read_the_environment() -> None:
    default = Settings.from_env({})
    assert default.task_timeout == 3600 and default.max_output_bytes == 256 * 1024
    given = Settings.from_env(
        {"HEADWATER_TASK_TIMEOUT": "90s", "HEADWATER_MAX_OUTPUT_BYTES": "1000"}
    )
    assert given.task_timeout == 90 and given.max_output_bytes == 1000


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("HEADWATER_TASK_TIMEOUT", "soon"),
        ("HEADWATER_TASK_TIMEOUT", "0"),
        ("HEADWATER_MAX_OUTPUT_BYTES", "-1"),
        ("HEADWATER_MAX_OUTPUT_BYTES", "2000000"),
        ("HEADWATER_MAX_OUTPUT_BYTES", "1MB"),
    ],
)
def test_a_bad_timeout_or_output_limit_is_refused_by_name(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})
