"""The bridges headwater knows: one explicit declaration each, and no cloud SDK imported.

Design. A bridge is declared by its typed settings class in ``headwater.bridges.settings``
(a module that imports no SDK), decorated with ``@bridge("sqs",
source="headwater.bridges.sqs:SqsSource", extra="aws", flag="--sqs", ...)``. So the
registry knows every bridge (its kind, settings, command-line flags and the extra it
needs) without importing the bridge's module; ``build`` imports that module only when a
source of its kind is built, so a user without the ``gcp`` extra can still bridge SQS. The
bridge module keeps what needs its SDK: the source class and its mapper (``@mapper``).

What must hold:

- a kind is declared once; its source class takes the settings' fields as keyword
  arguments (checked by ``tests/unit/test_registry.py``);
- settings are built only through ``BridgeSettings.from_mapping``: an unknown key, a
  missing one or a value of the wrong type is a ``ConfigError`` naming the key and the
  bridge, and a secret field (``option(secret=True)``) holds a reference
  (``${env:NAME}``/``${file:/path}``), never a literal, before anything connects.
"""

from __future__ import annotations

import dataclasses
import importlib
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Self, TypeVar, Union, get_args, get_origin, get_type_hints

from headwater.bridges.base import Source
from headwater.runner.errors import ConfigError
from headwater.runner.secrets import credential_problem, is_reference

T = TypeVar("T")
S = TypeVar("S", bound="BridgeSettings")
DECLARATIONS = "headwater.bridges.settings"
NOT_A_REFERENCE = "a secret must be a reference such as ${env:NAME} or ${file:/path}, not a literal"


def option(
    default: T,
    *,
    flag: str | None = None,
    help: str = "",
    metavar: str | None = None,
    secret: bool = False,
) -> T:
    """A settings field with a default; ``flag`` makes it a ``headwater dev`` option shared
    by every source of the bridge; ``secret`` marks a field that must be a reference."""
    metadata = {"flag": flag, "help": help, "metavar": metavar, "secret": secret}
    return dataclasses.field(default=default, repr=not secret, metadata=metadata)


def secret_problem(value: str | None) -> str | None:
    """Why ``value`` may not stand in a secret field (it is a literal), or None."""
    if value is None or is_reference(value):
        return None
    return credential_problem("secret", value) or NOT_A_REFERENCE


@dataclass(frozen=True, kw_only=True)
class BridgeSettings:
    """Base of every bridge's settings: built from a mapping, strictly."""

    kind: ClassVar[str] = ""

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Self:
        """The settings from ``values``; ``ConfigError`` names the bridge and the wrong key."""
        where = f"{cls.kind} bridge"
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known.keys())
        if unknown:
            raise ConfigError(
                f"{where}: unknown setting(s) {', '.join(map(repr, unknown))} "
                f"(known: {', '.join(known)})"
            )
        missing = [name for name, f in known.items() if name not in values and _required(f)]
        if missing:
            raise ConfigError(f"{where}: missing setting(s) {', '.join(map(repr, missing))}")
        hints = get_type_hints(cls)
        for name, value in values.items():
            if not _accepts(hints[name], value):
                raise ConfigError(
                    f"{where}: setting {name!r} must be {_describe(hints[name])}, "
                    f"not {type(value).__name__}"
                )
            problem = secret_problem(value) if known[name].metadata.get("secret") else None
            if problem:
                raise ConfigError(f"{where}: setting {name!r}: {problem}")
        return cls(**values)

    def as_arguments(self) -> dict[str, Any]:
        """The fields as the source class's keyword arguments."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclass(frozen=True)
class Bridge:
    """One declared bridge. ``flag`` is its repeatable ``headwater dev`` option; each value
    becomes one source, whose settings ``value`` makes from the flag's text."""

    kind: str
    settings: type[BridgeSettings]
    source: str  # "module:Class", imported only when a source of this kind is built
    extra: str | None
    flag: str
    metavar: str
    help: str
    value: Callable[[str], dict[str, Any]]

    def options(self) -> list[dataclasses.Field[Any]]:
        """The settings fields that are ``headwater dev`` options, in declaration order."""
        return [f for f in dataclasses.fields(self.settings) if f.metadata.get("flag")]

    def source_class(self) -> Callable[..., Source]:
        """Import the bridge's module (and so its SDK) and return its source class."""
        module_name, _, name = self.source.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            missing = exc.name or ""
            if self.extra is None or missing.partition(".")[0] == "headwater":
                raise  # a bug of headwater's, not a missing extra
            raise ConfigError(
                f"the {self.kind} bridge needs the {self.extra!r} extra "
                f"(pip install 'headwater[{self.extra}]'): {exc}"
            ) from exc
        source: Callable[..., Source] = getattr(module, name)
        return source


_BRIDGES: dict[str, Bridge] = {}


def bridge(
    kind: str,
    *,
    source: str,
    flag: str,
    metavar: str,
    help: str,
    value: str | Callable[[str], dict[str, Any]],
    extra: str | None = None,
) -> Callable[[type[S]], type[S]]:
    """Declare a bridge by its settings class. ``value`` is the settings field the flag's
    text fills, or a function from that text to settings."""

    def declare(settings: type[S]) -> type[S]:
        if kind in _BRIDGES:
            raise ValueError(f"a bridge of kind {kind!r} is declared already")
        settings.kind = kind
        parse = value if callable(value) else _fills(value)
        _BRIDGES[kind] = Bridge(kind, settings, source, extra, flag, metavar, help, parse)
        return settings

    return declare


def bridges() -> list[Bridge]:
    """Every declared bridge, in declaration order."""
    importlib.import_module(DECLARATIONS)
    return list(_BRIDGES.values())


def get(kind: str) -> Bridge:
    importlib.import_module(DECLARATIONS)
    try:
        return _BRIDGES[kind]
    except KeyError:
        raise ConfigError(f"unknown bridge {kind!r} (known: {', '.join(_BRIDGES)})") from None


def build(kind: str, values: Mapping[str, Any]) -> Source:
    """One source of ``kind`` from its settings (checked before its module is imported)."""
    declared = get(kind)
    settings = declared.settings.from_mapping(values)
    return declared.source_class()(**settings.as_arguments())


def _fills(name: str) -> Callable[[str], dict[str, Any]]:
    def parse(text: str) -> dict[str, Any]:
        return {name: text}

    return parse


def _required(f: dataclasses.Field[Any]) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _accepts(hint: Any, value: Any) -> bool:
    allowed = get_args(hint) if get_origin(hint) in (Union, types.UnionType) else (hint,)
    if isinstance(value, bool):
        return bool in allowed
    if isinstance(value, int) and float in allowed:
        return True
    return any(isinstance(value, kind) for kind in allowed if isinstance(kind, type))


def _describe(hint: Any) -> str:
    allowed = get_args(hint) if get_origin(hint) in (Union, types.UnionType) else (hint,)
    return " or ".join("null" if kind is type(None) else kind.__name__ for kind in allowed)
