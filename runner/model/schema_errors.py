"""Turn JSON Schema validation errors into short sentences a person can act on.

Pure: no files, no YAML. Every error becomes one or more ``SchemaProblem``s, each naming
the place in the document it is about (a path of keys and list indexes) and a message
such as ``must be an integer between 0 and 100 (got "two")``. A schema guides the wording
through the ``description`` of a leaf definition, written as a noun phrase ("a duration
such as 30s"), so that "must be <description>" reads well.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from jsonschema import ValidationError
from jsonschema.protocols import Validator

DocPath = tuple[str | int, ...]

_TYPE_WORDS = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "array": "a list",
    "object": "a mapping",
    "null": "null",
}


@dataclass(frozen=True, slots=True)
class SchemaProblem:
    """``message`` about the value at ``path`` (which may name a missing key)."""

    path: DocPath
    message: str


def schema_problems(validator: Validator, instance: Any) -> list[SchemaProblem]:
    """Every problem ``validator`` finds in ``instance``, in the validator's order."""
    problems: list[SchemaProblem] = []
    for error in validator.iter_errors(instance):
        for problem in translate(error):
            if problem not in problems:
                problems.append(problem)
    return problems


def translate(error: ValidationError) -> list[SchemaProblem]:
    """One jsonschema error as problems; falls back to jsonschema's text for rare keywords."""
    path: DocPath = tuple(error.path)
    schema: Any = error.schema
    keyword = error.validator
    value = error.instance
    if "propertyNames" in error.relative_schema_path:  # ``value`` is the offending key
        return [SchemaProblem((*path, value), _must_be(schema, value))]
    if keyword == "additionalProperties":
        known = schema.get("properties", {})
        patterns = [re.compile(p) for p in schema.get("patternProperties", {})]
        return [
            SchemaProblem((*path, key), "unknown field")
            for key in value
            if key not in known and not any(p.search(key) for p in patterns)
        ]
    if keyword == "required":
        return [
            SchemaProblem((*path, key), "required field is missing")
            for key in error.validator_value
            if key not in value
        ]
    if keyword == "oneOf":
        return [SchemaProblem(path, _one_of(error.validator_value))]
    if keyword in {"minItems", "minProperties", "minLength"}:
        least = error.validator_value
        return [
            SchemaProblem(
                path,
                "must not be empty" if least == 1 else f"is too short (at least {least} needed)",
            )
        ]
    if keyword == "uniqueItems":
        return [SchemaProblem(path, "must not list the same item twice")]
    if keyword in {
        "type",
        "pattern",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "enum",
        "const",
        "format",
    }:
        return [SchemaProblem(path, _must_be(schema, value, keyword))]
    return [SchemaProblem(path, error.message)]


def field_name(path: Iterable[str | int]) -> str:
    """``("tasks", "read", "needs", 0)`` -> ``tasks.read.needs[0]``; the root is ``<root>``."""
    text = ""
    for step in path:
        text += f"[{step}]" if isinstance(step, int) else (f".{step}" if text else str(step))
    return text or "<root>"


def shown(value: Any) -> str:
    """A value as it would appear in the file, kept short: ``"two"``, ``5``, ``a list``."""
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
        return text if len(text) <= 60 else text[:56] + '..."'
    if value is None or isinstance(value, bool | int | float):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _must_be(schema: Any, value: Any, keyword: str = "type") -> str:
    if keyword == "enum":
        expected = "one of " + ", ".join(shown(option) for option in schema["enum"])
    elif keyword == "const":
        expected = shown(schema["const"])
    elif keyword == "format":
        expected = f"a valid {schema['format']}"
    else:
        expected = _expected(schema)
    return f"must be {expected} (got {shown(value)})"


def _expected(schema: Any) -> str:
    """What a (leaf) schema accepts, in words."""
    if not isinstance(schema, dict):
        return "something else"
    if "description" in schema:
        return str(schema["description"])
    types = schema.get("type", [])
    types = [types] if isinstance(types, str) else list(types)
    low, high = schema.get("minimum"), schema.get("maximum")
    if len(types) == 1 and types[0] in {"integer", "number"} and low is not None:
        kind = _TYPE_WORDS[types[0]]
        return f"{kind} between {low} and {high}" if high is not None else f"{kind} >= {low}"
    if "pattern" in schema:
        return f"a string matching {schema['pattern']}"
    return " or ".join(_TYPE_WORDS.get(name, name) for name in types) or "a different value"


def _one_of(branches: Sequence[Any]) -> str:
    """``oneOf: [{required: [python]}, {required: [command]}]`` -> "give exactly one of ..."."""
    names = [
        branch["required"][0]
        for branch in branches
        if isinstance(branch, dict)
        and list(branch) == ["required"]
        and len(branch["required"]) == 1
    ]
    if len(names) == len(branches):
        return f"give exactly one of {', '.join(names[:-1])} or {names[-1]}"
    return "must match exactly one of the allowed forms"
