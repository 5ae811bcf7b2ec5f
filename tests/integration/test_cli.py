"""The ``headwater validate`` command as a user runs it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.processes import HEADWATER

FIXTURES = Path(__file__).parent.parent / "fixtures" / "pipelines"


def test_validate_accepts_good_files() -> None:
    done = subprocess.run(
        [HEADWATER, "validate", str(FIXTURES)], capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stdout) == (0, "ok: 2 pipeline(s) valid\n")


def test_validate_reports_file_line_field_and_exits_non_zero(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: bad\n"
        "triggers:\n"
        "  - type: aws.s3.object.created\n"
        "    colour: blue\n"
        "tasks:\n"
        "  read:\n"
        "    python: tasks:read\n"
        "    retries: two\n"
        "  write:\n"
        "    python: tasks:write\n"
        "    needs: [reed]\n"
    )
    done = subprocess.run(
        [HEADWATER, "validate", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert done.stdout.splitlines() == [
        f"{bad}:4: triggers[0].colour: unknown field",
        f'{bad}:8: tasks.read.retries: must be an integer between 0 and 100 (got "two")',
        f'{bad}:11: tasks.write.needs[0]: unknown task "reed"',
    ]


def test_dev_refuses_a_state_dir_it_cannot_write(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    done = subprocess.run(
        [HEADWATER, "dev", "examples"],
        capture_output=True,
        text=True,
        env={**os.environ, "HEADWATER_STATE_DIR": str(blocker / "state")},
        timeout=60,
    )
    assert done.returncode == 1
    assert "HEADWATER_STATE_DIR: cannot keep the run table's local state in" in done.stderr
    assert str(blocker) in done.stderr


def test_one_shot_commands_without_kafka_say_so_and_exit_1() -> None:
    env = {**os.environ, "HEADWATER_KAFKA": "127.0.0.1:1"}
    for command in (
        ["runs"],
        ["run", "show", "r1"],
        ["run", "cancel", "r1"],
        ["dlq", "list"],
        ["trace", "e1", "examples"],
    ):
        done = subprocess.run(
            [HEADWATER, *command], capture_output=True, text=True, env=env, timeout=60
        )
        assert done.returncode == 1, (command, done)
        assert "headwater: Kafka (127.0.0.1:1) failed the request" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr, (command, done.stderr)
