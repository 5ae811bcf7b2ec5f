"""The pipeline loader: valid files become the model, invalid ones exact problem lines."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from headwater.runner.errors import PipelineErrors
from headwater.runner.model.loader import load_pipeline, load_pipelines, validate_paths
from headwater.runner.model.pipeline import Backoff, Batching, Condition

VALID = """\
name: csv-report
description: Summarise uploaded CSV files
triggers:
  - type: aws.s3.object.created
    source: "aws:s3*"
    subject: "s3://incoming/*.csv"
    data:
      size: {gt: 0, lt: 10.5}
      bucket: incoming
      detail.tags: {exists: true}
tasks:
  summarise:
    python: csv_tasks:summarise
    needs: [read]
  read:
    python: csv_tasks.io:read_object
    retries: 2
    backoff: {initial: 250ms, max: 30s, multiplier: 3}
    timeout: 5m
    route: slow
    with: {token: "${env:TOKEN}", columns: [a, b], limit: 1.5, nested: {on: true}}
  notify:
    command: [echo, done]
"""

# A minimal valid pipeline; tests append one task (at line 6 onwards) to it.
HEAD = """\
name: demo
triggers:
  - type: t
tasks:
"""


def write(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(PipelineErrors) as caught:
        load_pipeline(path)
    return caught.value.problems


def test_schema_files_are_valid_draft_2020_12() -> None:
    for name in ("pipeline.schema.json", "cloudevent.schema.json"):
        text = (resources.files("headwater.schemas") / name).read_text(encoding="utf-8")
        Draft202012Validator.check_schema(json.loads(text))


def test_valid_file_loads_into_the_model(tmp_path: Path) -> None:
    path = write(tmp_path, VALID)
    pipeline = load_pipeline(path)

    assert (pipeline.name, pipeline.description) == ("csv-report", "Summarise uploaded CSV files")
    assert pipeline.file == str(path)
    (trigger,) = pipeline.triggers
    assert (trigger.type, trigger.source, trigger.subject) == (
        "aws.s3.object.created",
        "aws:s3*",
        "s3://incoming/*.csv",
    )
    assert trigger.conditions == (
        Condition(("size",), "gt", 0),
        Condition(("size",), "lt", 10.5),
        Condition(("bucket",), "eq", "incoming"),
        Condition(("detail", "tags"), "exists", True),
    )
    # Topological, and file order among ready tasks: read before summarise, notify last.
    assert [task.name for task in pipeline.tasks] == ["read", "summarise", "notify"]
    read, summarise, notify = pipeline.tasks
    assert (read.kind, read.target, read.retries, read.route) == (
        "python",
        "csv_tasks.io:read_object",
        2,
        "slow",
    )
    assert read.backoff == Backoff(initial=0.25, maximum=30.0, multiplier=3.0)
    assert read.timeout == 300.0
    assert summarise.needs == ("read",)
    assert (summarise.retries, summarise.timeout, summarise.route) == (0, None, "default")
    assert summarise.backoff == Backoff()
    assert (notify.kind, notify.target) == ("command", ("echo", "done"))


def test_model_holds_plain_python_values(tmp_path: Path) -> None:
    pipeline = load_pipeline(write(tmp_path, VALID))
    params = pipeline.task("read").params
    assert params == {
        "token": "${env:TOKEN}",
        "columns": ["a", "b"],
        "limit": 1.5,
        "nested": {"on": True},
    }
    assert type(params) is dict and type(params["nested"]) is dict
    assert type(params["columns"]) is list and type(params["limit"]) is float
    assert type(pipeline.triggers[0].conditions[1].value) is float


def test_file_order_breaks_ties_between_ready_tasks(tmp_path: Path) -> None:
    text = HEAD + "  c: {python: m:c, needs: [a]}\n  b: {python: m:b}\n  a: {python: m:a}\n"
    pipeline = load_pipeline(write(tmp_path, text))
    assert [task.name for task in pipeline.tasks] == ["b", "a", "c"]


@pytest.mark.parametrize(
    ("task", "expected"),
    [
        pytest.param(
            "  a:\n    python: m:f\n    retrys: 2\n",
            "7: tasks.a.retrys: unknown field",
            id="unknown-key",
        ),
        pytest.param(
            "  a:\n    python: m:f\n    retries: two\n",
            '7: tasks.a.retries: must be an integer between 0 and 100 (got "two")',
            id="wrong-type",
        ),
        pytest.param(
            "  a:\n    python: m:f\n    retries: 101\n",
            "7: tasks.a.retries: must be an integer between 0 and 100 (got 101)",
            id="out-of-range",
        ),
        pytest.param(
            "  a:\n    python: m:f\n    needs: [reed]\n",
            '7: tasks.a.needs[0]: unknown task "reed"',
            id="unknown-need",
        ),
        pytest.param(
            "  a:\n    python: m:f\n    needs:\n      - a\n",
            "8: tasks.a.needs[0]: a task cannot need itself",
            id="self-need",
        ),
        pytest.param(
            "  a:\n    python: m:f\n    timeout: 5 minutes\n",
            "7: tasks.a.timeout: '5 minutes' is not a duration like 30s, 5m, 250ms",
            id="bad-duration",
        ),
        pytest.param(
            "  a:\n    python: m:f\n    backoff: {initial: -1}\n",
            "7: tasks.a.backoff.initial: a duration cannot be negative",
            id="negative-duration",
        ),
        pytest.param(
            "  a:\n    python: m:f\n    command: [ls]\n",
            "5: tasks.a: give exactly one of python, command or http",
            id="python-and-command",
        ),
        pytest.param(
            "  a:\n    retries: 1\n",
            "5: tasks.a: give exactly one of python, command or http",
            id="neither-python-nor-command",
        ),
        pytest.param(
            "  a:\n    python: csv_tasks.read\n",
            "6: tasks.a.python: must be a Python target such as package.module:function "
            '(got "csv_tasks.read")',
            id="bad-python-target",
        ),
        pytest.param(
            "  a:\n    command: []\n",
            "6: tasks.a.command: must not be empty",
            id="empty-command",
        ),
        pytest.param(
            "  a:\n    python: m:f\n    with:\n      aws: AKIAIOSFODNN7EXAMPLE\n",
            "8: tasks.a.with.aws: looks like an AWS access key id; "
            "use a secret reference such as ${env:NAME}",
            id="aws-key-in-with",
        ),
        pytest.param(
            "  a:\n    command: [login, AKIAIOSFODNN7EXAMPLE]\n",
            "6: tasks.a.command[1]: looks like an AWS access key id; "
            "use a secret reference such as ${env:NAME}",
            id="aws-key-in-command",
        ),
        pytest.param(
            "  a:\n    python: m:f\n    with:\n      db:\n        password: hunter2\n",
            "9: tasks.a.with.db.password: a secret must be a reference such as ${env:NAME} "
            "or ${file:/path}, not a literal",
            id="literal-password",
        ),
    ],
)
def test_each_problem_is_one_exact_line(tmp_path: Path, task: str, expected: str) -> None:
    path = write(tmp_path, HEAD + task)
    assert problems_of(path) == [f"{path}:{expected}"]


UNKNOWN_FIELDS = """\
name: demo
triggers:
  - type: t
    bogus: 1
    data:
      size: {greater: 0}
      tags: [a]
tasks:
  a: {python: m:f}
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            UNKNOWN_FIELDS,
            [
                "4: triggers[0].bogus: unknown field",
                "6: triggers[0].data.size.greater: unknown field",
                "7: triggers[0].data.tags: must be a plain value (compared with eq) or a "
                "mapping of operators such as {gt: 0} (got a list)",
            ],
            id="unknown-trigger-field-and-bad-condition",
        ),
        pytest.param(
            "# a comment\ntriggers:\n  - source: s\ntasks:\n  a: {python: m:f}\n",
            [
                "2: name: required field is missing",
                "3: triggers[0].type: required field is missing",
            ],
            id="missing-required-at-the-parent-mapping",
        ),
        pytest.param(
            HEAD + "  a: {python: m:a, needs: [b]}\n  b: {python: m:b, needs: [a]}\n",
            ["5: tasks: cycle a -> b -> a"],
            id="cycle-with-its-path",
        ),
        pytest.param(
            "name: demo\ntriggers:\n  - type: t\n    bad: : x\n",
            ["4: <yaml>: mapping values are not allowed here"],
            id="yaml-syntax-error-is-one-line",
        ),
        pytest.param(
            HEAD + "  a:\n    python: m:f\n    needs: [x]\n    timeout: soon\n    route: Fast\n",
            [
                '7: tasks.a.needs[0]: unknown task "x"',
                "8: tasks.a.timeout: 'soon' is not a duration like 30s, 5m, 250ms",
                "9: tasks.a.route: must be a route name of lowercase letters, digits, '_' or '-' "
                '(got "Fast")',
            ],
            id="all-problems-of-a-file-in-line-order",
        ),
    ],
)
def test_problems_of_a_file_are_exact_lines_in_order(
    tmp_path: Path, text: str, expected: list[str]
) -> None:
    path = write(tmp_path, text)
    assert problems_of(path) == [f"{path}:{line}" for line in expected]


def test_secret_reference_is_accepted(tmp_path: Path) -> None:
    text = HEAD + '  a:\n    python: m:f\n    with: {password: "${env:TOKEN}"}\n'
    task = load_pipeline(write(tmp_path, text)).task("a")
    assert task.params == {"password": "${env:TOKEN}"}


def test_problems_of_all_files_are_reported_together(tmp_path: Path) -> None:
    good = write(tmp_path, VALID, "a.yaml")
    first = write(tmp_path, HEAD + "  a: {python: m:f, retries: -1}\n", "b.yaml")
    second = write(tmp_path, "name: [\n", "c.yml")
    write(tmp_path, "not: a pipeline\n", "notes.txt")
    missing = tmp_path / "missing.yaml"

    problems = validate_paths([tmp_path, good, missing])

    assert problems == [
        f"{first}:5: tasks.a.retries: must be an integer between 0 and 100 (got -1)",
        f"{second}:2: <yaml>: expected the node content, but found '<stream end>'",
        f"{missing}:1: <file>: cannot read: No such file or directory",
    ]
    with pytest.raises(PipelineErrors) as caught:
        load_pipelines([tmp_path])
    assert caught.value.problems == problems[:2]


def test_duplicate_names_across_files(tmp_path: Path) -> None:
    first = write(tmp_path, HEAD + "  a: {python: m:f}\n", "one.yaml")
    second = write(tmp_path, "# same name\n" + HEAD + "  b: {python: m:f}\n", "two.yaml")
    assert validate_paths([first, second]) == [
        f'{second}:2: name: pipeline "demo" is already defined in {first}'
    ]


def test_directory_loads_yaml_files_sorted_and_once(tmp_path: Path) -> None:
    write(tmp_path, HEAD.replace("demo", "second") + "  a: {python: m:f}\n", "b.yml")
    first = write(tmp_path, HEAD.replace("demo", "first") + "  a: {python: m:f}\n", "a.yaml")
    pipelines = load_pipelines([tmp_path, first])
    assert [p.name for p in pipelines] == ["first", "second"]
    assert validate_paths([tmp_path]) == []


def test_batching_triggers_load_into_the_model(tmp_path: Path) -> None:
    text = """\
name: demo
triggers:
  - type: sensor.reading
    batch: {max_events: 1000, max_wait: 2s}
  - type: storage.object.finalized
    batch: {key: data.bucket, quiet_for: 30s, max_wait: 5m}
  - type: t
tasks:
  a: {python: m:f}
"""
    pipeline = load_pipeline(write(tmp_path, text))
    assert [t.batch for t in pipeline.triggers] == [
        Batching(max_events=1000, max_wait=2.0),
        Batching(max_wait=300.0, quiet_for=30.0, key="data.bucket"),
        None,
    ]


def test_batching_problems_name_the_field_and_line(tmp_path: Path) -> None:
    text = """\
name: demo
triggers:
  - type: a
    batch: {max_events: 10}
  - type: b
    batch:
      quiet_for: 0s
      key: detail
  - type: c
    batch: {max_wait: soon, max_events: 0}
tasks:
  a: {python: m:f}
"""
    path = write(tmp_path, text)
    assert problems_of(path) == [
        f"{path}:4: triggers[0].batch: needs max_wait or quiet_for, so that every window closes",
        f"{path}:7: triggers[1].batch.quiet_for: must be more than 0",
        f"{path}:8: triggers[1].batch.key: must be an event field: subject, source, type, id "
        'or data.<path> (got "detail")',
        f"{path}:10: triggers[2].batch.max_events: must be a number of events from 1 to 100000 "
        "(got 0)",
        f"{path}:10: triggers[2].batch.max_wait: 'soon' is not a duration like 30s, 5m, 250ms",
    ]


def test_trigger_ids_survive_moves_and_window_tuning_but_not_a_new_match(
    tmp_path: Path,
) -> None:
    def ids(triggers: str) -> list[str]:
        text = f"name: demo\ntriggers:\n{triggers}tasks:\n  a: {{python: m:f}}\n"
        return [t.id for t in load_pipeline(write(tmp_path, text)).triggers]

    batching = "  - type: sensor\n    batch: {max_events: 10, max_wait: 2s, key: subject}\n"
    other = "  - type: t\n"
    [first] = ids(batching)
    assert ids(other + batching)[1] == first  # moved down: the same trigger
    assert ids(batching.replace("max_wait: 2s", "max_wait: 9s"))[0] == first  # tuned
    assert ids(batching.replace("type: sensor", "type: meter"))[0] != first  # matches other
    assert ids(batching.replace("key: subject", "key: source"))[0] != first  # other windows
    assert ids("  - {id: readings, type: sensor}\n") == ["readings"]
    twin = ids(batching + batching)
    assert twin[0] == first and twin[1] != first  # alike: still told apart


def test_duplicate_trigger_ids_are_refused_at_their_line(tmp_path: Path) -> None:
    text = "name: demo\ntriggers:\n  - {id: a, type: t}\n  - {id: a, type: u}\ntasks:\n"
    path = write(tmp_path, text + "  a: {python: m:f}\n")
    assert problems_of(path) == [f"{path}:4: triggers[1].id: 'a' is already trigger 0's id"]
