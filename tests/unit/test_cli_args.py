"""Relative times after ``--since``/``--from``/``--to`` (``-2h``) reach argparse as
values, not as unknown options."""

from __future__ import annotations

from headwater.runner.cli.main import _parser, _relative_times_joined


def test_a_relative_time_is_joined_to_its_option() -> None:
    assert _relative_times_joined(["runs", "--since", "-5m"]) == ["runs", "--since=-5m"]
    assert _relative_times_joined(["replay", "p", "--from", "-2.5h", "--to", "-1h"]) == [
        "replay",
        "p",
        "--from=-2.5h",
        "--to=-1h",
    ]
    # anything else stays as it was: other options, and values that are no time
    for argv in (["run", "cancel", "r", "--reason", "-5m"], ["runs", "--since", "-x"]):
        assert _relative_times_joined(argv) == argv


def test_the_parser_reads_it() -> None:
    args = _parser().parse_args(_relative_times_joined(["runs", "--since", "-2h"]))
    assert isinstance(args.since, float)
