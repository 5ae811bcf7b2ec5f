"""Building sources from ``headwater dev``'s flags, all generated from the registry.

Each declared bridge gives one repeatable flag (``--sqs QUEUE_URL``: one source per value)
and the options of its settings (``--aws-region``, ``--servicebus-connection``), shared by
all its sources. Cloud SDKs are imported only for the sources asked for, so a user without
the ``gcp`` or ``azure`` extra can still bridge SQS or a drop folder. Secrets (Service Bus
connection string, webhook token) must be references; a literal that looks like a
credential is refused before anything connects.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping
from typing import Any

from headwater.bridges import registry
from headwater.bridges.base import Source
from headwater.runner.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sources (each repeatable)")
    added: set[str] = set()
    for declared in registry.bridges():
        group.add_argument(
            declared.flag,
            action="append",
            default=[],
            metavar=declared.metavar,
            help=declared.help,
        )
        for field in declared.options():
            flag = field.metadata["flag"]
            if flag in added:  # an option shared by two bridges (one AWS endpoint)
                continue
            added.add(flag)
            extra: dict[str, Any] = {}
            if field.metadata["metavar"]:
                extra["metavar"] = field.metadata["metavar"]
            group.add_argument(flag, default=field.default, help=field.metadata["help"], **extra)


def build(args: argparse.Namespace) -> list[Source]:
    declared = registry.bridges()
    for one in declared:  # every secret flag, given a source or not, before any connects
        for field in one.options():
            if field.metadata["secret"]:
                flag = field.metadata["flag"]
                problem = registry.secret_problem(getattr(args, _dest(flag)))
                if problem:
                    raise ConfigError(f"{flag}: {problem}")
    sources: list[Source] = []
    for one in declared:
        options = {f.name: getattr(args, _dest(f.metadata["flag"])) for f in one.options()}
        for text in getattr(args, _dest(one.flag)):
            sources.append(registry.build(one.kind, {**one.value(text), **options}))
    return sources


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def problems(kind: str, options: Mapping[str, Any]) -> list[tuple[tuple[str | int, ...], str]]:
    """Why a config file's source of ``kind`` with ``options`` cannot be built (checked
    before anything connects), each at its place under the source."""
    try:
        declared = registry.get(kind)
    except ConfigError as exc:
        return [(("kind",), str(exc))]
    try:
        declared.settings.from_mapping(options)
    except ConfigError as exc:
        return [(("options",), str(exc))]
    return []


def from_config(specs: Iterable[Any]) -> list[Source]:
    """The sources a config file declares (``name``, ``kind``, ``options``), each named as
    the file names it."""
    return [_Named(registry.build(spec.kind, spec.options), spec.name) for spec in specs]


class _Named:
    """A source under the name its config gives it."""

    def __init__(self, source: Source, name: str) -> None:
        self._source = source
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._source, attribute)
