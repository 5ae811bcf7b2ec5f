"""Load pipeline files (YAML) into validated ``Pipeline`` models.

A file is read with ruamel's round-trip loader (which keeps line numbers), checked against
``headwater.schemas/pipeline.schema.json``, then against what a schema cannot say: ``needs``
name other existing tasks, the tasks form a DAG, durations parse, and no string anywhere is
a literal credential. Every problem is a line ``file:line: field: message``.

What must always hold:
- a ``Pipeline`` is returned only when none of the given files has any problem; otherwise
  one ``PipelineErrors`` lists the problems of every file (each file's in line order);
- the model holds plain Python values only (dict, list, str, int, float, bool, None);
- ``Pipeline.tasks`` is in topological order of ``needs``, ready tasks in file order.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

from jsonschema import Draft202012Validator
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError
from ruamel.yaml.scalarbool import ScalarBoolean

from headwater.runner.errors import PipelineErrors
from headwater.runner.model import checks
from headwater.runner.model.build import build
from headwater.runner.model.matching import triggered_by
from headwater.runner.model.pipeline import (
    Pipeline,
)
from headwater.runner.model.schema_errors import DocPath, field_name, schema_problems

PathLike = str | os.PathLike[str]
_SUFFIXES = (".yaml", ".yml")


class _Problem(NamedTuple):
    line: int
    field: str
    message: str


@dataclass(slots=True)
class _Loaded:
    """One file's outcome: a pipeline, or the problems that kept it from being one."""

    shown: str
    pipeline: Pipeline | None = None
    problems: list[_Problem] = field(default_factory=list)
    name: str | None = None
    name_line: int = 1
    trigger_lines: list[int] = field(default_factory=list)

    def lines(self) -> list[str]:
        ordered = sorted(dict.fromkeys(self.problems), key=lambda problem: problem.line)
        return [f"{self.shown}:{line}: {name}: {message}" for line, name, message in ordered]


def load_pipeline(path: PathLike) -> Pipeline:
    """Load one pipeline file; raises ``PipelineErrors`` with all of its problems."""
    loaded = _load_file(Path(path), os.fspath(path))
    if loaded.pipeline is None:
        raise PipelineErrors(loaded.lines())
    return loaded.pipeline


def load_pipelines(paths: Iterable[PathLike]) -> list[Pipeline]:
    """Load files and directories (their ``*.yaml``/``*.yml``, sorted), all or nothing.

    Raises one ``PipelineErrors`` with the problems of all files, including pipeline names
    defined twice (reported at the later file's ``name``).
    """
    pipelines: list[Pipeline] = []
    problems: list[str] = []
    first_file: dict[str, str] = {}
    files: dict[str, _Loaded] = {}
    for path, shown in _expand(paths):
        loaded = _load_file(path, shown)
        if loaded.name is not None:
            first = first_file.setdefault(loaded.name, shown)
            if first != shown:
                message = f'pipeline "{loaded.name}" is already defined in {first}'
                loaded.problems.append(_Problem(loaded.name_line, "name", message))
                loaded.pipeline = None
        problems += loaded.lines()
        if loaded.pipeline is not None:
            pipelines.append(loaded.pipeline)
            files[loaded.pipeline.name] = loaded
    problems += _cycle_problems(pipelines, files)
    if problems:
        raise PipelineErrors(problems)
    return pipelines


def _cycle_problems(pipelines: list[Pipeline], files: dict[str, _Loaded]) -> list[str]:
    """Pipelines triggered by each other's completions in a cycle (each cycle once, at
    the trigger that closes it): such runs would start each other without end."""
    edges: dict[str, list[tuple[str, int]]] = {p.name: [] for p in pipelines}
    for pipeline in pipelines:
        for position, trigger in enumerate(pipeline.triggers):
            for upstream in edges:
                if triggered_by(trigger, upstream):
                    edges[pipeline.name].append((upstream, position))
    out: list[str] = []
    for cycle, position in checks.graph_cycles(edges):
        loaded = files[cycle[0]]
        lines = loaded.trigger_lines
        line = lines[position] if position < len(lines) else loaded.name_line
        path = " -> ".join(f'"{name}"' for name in reversed(cycle))
        message = (
            f"a cycle of pipelines, each triggered by the completion of the one before: {path}"
            " (name the upstream pipeline in subject, or exclude one with data.pipeline: {ne: ...})"
        )
        out.append(f"{loaded.shown}:{line}: triggers.{position}: {message}")
    return out


def validate_paths(paths: Iterable[PathLike]) -> list[str]:
    """The problems of ``paths`` as ``file:line: field: message`` lines (empty when valid)."""
    try:
        load_pipelines(paths)
    except PipelineErrors as exc:
        return exc.problems
    return []


def _expand(paths: Iterable[PathLike]) -> Iterator[tuple[Path, str]]:
    """Files to load, each once, with the name to show for it (the path as given)."""
    seen: set[Path] = set()
    for given in paths:
        path = Path(given)
        if path.is_dir():
            children = sorted(p for p in path.iterdir() if p.suffix in _SUFFIXES and p.is_file())
            found = [(child, os.fspath(path / child.name)) for child in children]
        else:
            found = [(path, os.fspath(given))]
        for file, shown in found:
            key = file.resolve()
            if key not in seen:
                seen.add(key)
                yield file, shown


def _load_file(path: Path, shown: str) -> _Loaded:
    loaded = _Loaded(shown)
    try:
        root = YAML(typ="rt").load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        loaded.problems.append(_Problem(1, "<file>", f"cannot read: {exc.strerror or exc}"))
        return loaded
    except UnicodeDecodeError:
        loaded.problems.append(_Problem(1, "<file>", "cannot read: not UTF-8 text"))
        return loaded
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(exc, "problem", None) or str(exc)
        loaded.problems.append(_Problem(line, "<yaml>", problem))
        return loaded

    data = plain(root)
    loaded.problems = _problems(root, data)
    if isinstance(data, dict) and isinstance(data.get("name"), str):
        loaded.name, loaded.name_line = data["name"], line_of(root, ("name",))
    triggers = data.get("triggers") if isinstance(data, dict) else None
    if isinstance(triggers, list):
        loaded.trigger_lines = [line_of(root, ("triggers", i)) for i in range(len(triggers))]
    if not loaded.problems:
        loaded.pipeline = build(data, shown)
    return loaded


def _problems(root: Any, data: Any) -> list[_Problem]:
    """The schema's problems, then those a schema cannot see; each at its line."""
    found = [(p.path, p.message) for p in schema_problems(_schema(), data)]
    if isinstance(data, dict):
        found += checks.pipeline_problems(data)
        found += checks.service_problems(data)
        found += checks.schedule_problems(data)
        found += checks.join_problems(data)
    tasks = data.get("tasks") if isinstance(data, dict) else None
    if isinstance(tasks, dict):
        found += checks.needs_problems(tasks)
        found += checks.duration_problems(tasks)
        found += checks.http_problems(tasks)
    triggers = data.get("triggers") if isinstance(data, dict) else None
    if isinstance(triggers, list):
        found += checks.batch_problems(triggers)
        found += checks.trigger_id_problems(triggers)
    problems = [_Problem(line_of(root, at), field_name(at), msg) for at, msg in found]
    problems += [
        _Problem(line_of(root, at, of_value=True), field_name(at), msg)
        for at, msg in checks.credential_problems(data)
    ]
    if isinstance(tasks, dict):
        problems += [
            _Problem(line_of(root, ("tasks", cycle[0])), "tasks", "cycle " + " -> ".join(cycle))
            for cycle in checks.cycles(tasks)
        ]
    return problems


@functools.cache
def _schema() -> Draft202012Validator:
    schema = resources.files("headwater.schemas") / "pipeline.schema.json"
    return Draft202012Validator(json.loads(schema.read_text(encoding="utf-8")))


def plain(node: Any) -> Any:
    """ruamel's round-trip values as plain Python ones (keys as strings, dates as ISO text)."""
    if isinstance(node, dict):
        return {str(key): plain(value) for key, value in node.items()}
    if isinstance(node, list):
        return [plain(item) for item in node]
    if isinstance(node, ScalarBoolean):  # an int subclass, so before int
        return bool(node)
    for kind in (bool, int, float, str):
        if isinstance(node, kind):
            return kind(node)
    if isinstance(node, date):  # also datetime
        return node.isoformat()
    return None if node is None else str(node)  # rare YAML types (!!binary, !!set) as text


def line_of(root: Any, path: DocPath, of_value: bool = False) -> int:
    """1-based line of the key (or its value) or item at ``path``; if missing, its parent's."""
    line = getattr(getattr(root, "lc", None), "line", 0) + 1
    node = root
    for step in path:
        try:
            if isinstance(node, CommentedMap):
                key = next(key for key in node if str(key) == step)
                place = node.lc.value(key) if of_value else node.lc.key(key)
                line, node = place[0] + 1, node[key]
            elif isinstance(node, CommentedSeq) and isinstance(step, int):
                line, node = node.lc.item(step)[0] + 1, node[step]
            else:
                break
        except (StopIteration, KeyError, IndexError, AttributeError):  # missing, or merged in
            break
    return line
