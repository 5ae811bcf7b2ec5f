"""Secret references and the literal-credential check.

A secret is written as a reference (``${env:NAME}`` or ``${file:/path}``) and resolved
only when a client needs it; the pipeline validator rejects strings that look like
credentials, so keys never land in files or logs.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from headwater.runner.errors import ConfigError

_REFERENCE = re.compile(r"^\$\{(env|file):([^}]+)\}$")

# Shapes of well-known credentials (provider prefixes and PEM blocks).
_CREDENTIAL_SHAPES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("an AWS access key id", re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b")),
    ("a private key", re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")),
    ("a Slack token", re.compile(r"\bxox[abposr]-[0-9A-Za-z-]{10,}")),
    ("a GitHub token", re.compile(r"\bgh[pousr]_[0-9A-Za-z]{30,}")),
    ("a Google API key", re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b")),
    ("an Azure connection-string key", re.compile(r"(SharedAccessKey|AccountKey)=[^;${]{16,}")),
    ("a bearer token", re.compile(r"\bBearer\s+[0-9A-Za-z._~+/-]{20,}")),
)
_SECRET_NAMED_KEY = re.compile(r"(secret|password|passwd|token|api[_-]?key|access[_-]?key)", re.I)


def resolve_reference(value: str) -> str:
    """Resolve ``${env:NAME}`` / ``${file:/path}``; any other value is returned as is."""
    match = _REFERENCE.match(value)
    if match is None:
        return value
    kind, target = match.groups()
    if kind == "env":
        if target not in os.environ:
            raise ConfigError(f"secret reference ${{env:{target}}}: variable is not set")
        return os.environ[target]
    try:
        return Path(target).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"secret reference ${{file:{target}}}: {exc.strerror}") from None


def is_reference(value: str) -> bool:
    return _REFERENCE.match(value) is not None


def credential_problem(key: str, value: str) -> str | None:
    """Why ``value`` (found under ``key``) looks like a literal credential, or None."""
    if is_reference(value):
        return None
    for label, shape in _CREDENTIAL_SHAPES:
        if shape.search(value):
            return f"looks like {label}; use a secret reference such as ${{env:NAME}}"
    if _SECRET_NAMED_KEY.search(key) and value and "${" not in value:
        return "a secret must be a reference such as ${env:NAME} or ${file:/path}, not a literal"
    return None
