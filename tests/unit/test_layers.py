"""The dependency rule of ``headwater.runner`` and ``headwater.bridges``, checked on the
source (every ``import``, also inside functions and ``TYPE_CHECKING`` blocks).

- Within ``runner``, a layer imports only the layers below it: base (errors, durations,
  secrets, settings, envelope, flow) < model, log < runs < observe, executor < the
  processing loops (router, control, worker, supervise) < engine < cli.
- Within ``runner``, only the engine and the CLI import ``bridges``.
- ``bridges`` import only ``runner``'s base layer and ``log``.
- ``runner/_top`` is the ``headwater`` package (task authors' names), above them all.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = {"headwater.runner": ROOT / "runner", "headwater.bridges": ROOT / "bridges"}

BASE = frozenset({"errors", "durations", "secrets", "settings", "envelope", "flow", "metrics"})
LOOPS = frozenset(
    {
        "router",
        "control",
        "worker",
        "supervise",
        "tasks",
        "probes",
        "backpressure",
        "scheduler",
        "replay",
        "routing",
        "trace",
        "alerts",
        "lineage",
        "cancels",
    }
)
#: What each layer may import (its own layer included).
ALLOWED: dict[str, frozenset[str]] = {
    "base": frozenset({"base"}),
    "model": frozenset({"base", "model"}),
    "log": frozenset({"base", "log"}),
    "runs": frozenset({"base", "model", "log", "runs"}),
    "observe": frozenset({"base", "runs", "observe"}),
    "executor": frozenset({"base", "model", "runs", "executor"}),
    "loops": frozenset({"base", "model", "log", "runs", "observe", "executor", "loops"}),
    "engine": frozenset(
        {"base", "model", "log", "runs", "observe", "executor", "loops", "engine", "bridges"}
    ),
    "cli": frozenset(
        {"base", "model", "log", "runs", "observe", "executor", "loops", "engine", "cli"}
        | {"bridges"}
    ),
    "bridges": frozenset({"base", "log", "bridges"}),
}


def layer_of(module: str) -> str | None:
    """The layer of a ``headwater`` module, or None for anything else."""
    if module == "headwater.bridges" or module.startswith("headwater.bridges."):
        return "bridges"
    if not module.startswith("headwater.runner."):
        return "base" if module == "headwater.runner" else None
    top = module.split(".")[2]
    if top in BASE:
        return "base"
    if top in LOOPS:
        return "loops"
    return top if top in ALLOWED else None


def imports_of(source: str, module: str) -> list[tuple[int, str]]:
    """(line, imported module) of every import in ``source``, relative ones resolved."""
    found = []
    package = module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            # ``from headwater.runner import engine`` imports the module ``engine``.
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def violations(sources: dict[str, str]) -> list[str]:
    """``module:line imports X (layer a may not import layer b)`` for every broken rule."""
    problems = []
    for module, source in sources.items():
        own = layer_of(module)
        assert own is not None, f"{module} belongs to no layer: add it to the rule"
        for line, imported in imports_of(source, module):
            theirs = layer_of(imported)
            if theirs is not None and theirs not in ALLOWED[own]:
                problems.append(
                    f"{module}:{line} imports {imported} ({own} may not import {theirs})"
                )
    return sorted(set(problems))


def _package_sources() -> dict[str, str]:
    sources = {}
    for package, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[0] == "_top":  # installs as ``headwater`` itself, above every layer
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            sources[".".join((package, *parts))] = path.read_text()
    return sources


def test_the_packages_keep_the_dependency_rule() -> None:
    assert violations(_package_sources()) == []


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("headwater.runner.model.pipeline", "from headwater.runner.control import X\n"),
        ("headwater.runner.runs.table", "from headwater.runner.observe import hooks\n"),
        ("headwater.runner.router", "import headwater.bridges.sqs\n"),
        ("headwater.runner.log.kafka", "from ..runs import machine\n"),
        ("headwater.bridges.sqs", "from headwater.runner.runs.machine import Run\n"),
        ("headwater.runner.errors", "def f():\n    from headwater.runner import engine\n"),
    ],
)
def test_a_forbidden_import_is_reported_with_its_place(module: str, source: str) -> None:
    [problem] = violations({module: source})
    assert problem.startswith(f"{module}:")


def test_allowed_imports_are_not_reported() -> None:
    sources = {
        "headwater.runner.engine": "from headwater.bridges.pump import Pump\n",
        "headwater.runner.runs.table": "from headwater.runner.log.records import Due\n",
        "headwater.bridges.pump": "from headwater.runner.log import kafka\n",
    }
    assert violations(sources) == []
