"""Secret references, their resolution where they are used, redaction, and the
literal-credential check.

A secret is written as a reference — ``${env:NAME}``, ``${file:/path}`` or
``${aws-sm:name#key}`` (AWS Secrets Manager; ``#key`` picks a field of a JSON secret;
``AWS_ENDPOINT_URL`` honoured) — alone or inside a string (``Bearer ${env:TOKEN}``), and
resolved only when a client or a task needs it. Every value resolved is remembered by the
process, and ``redact`` replaces it with ``***`` wherever text leaves the process (logs,
task outputs and errors, DLQ records): a resolved secret never appears in them. The
pipeline validator rejects strings that look like credentials, so keys never land in
files either.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from headwater.runner.errors import ConfigError

_REFERENCE = re.compile(r"^\$\{(env|file|aws-sm):([^}]+)\}$")
_EMBEDDED = re.compile(r"\$\{(env|file|aws-sm):([^}]+)\}")
#: Secrets Manager values are kept this long (a task does not call AWS per attempt).
AWS_CACHE_SECONDS = 300.0
#: Resolved values shorter than this are not redacted (they would mask ordinary text).
REDACT_MIN = 4
MASK = "***"

_resolved: set[str] = set()
_resolved_lock = threading.Lock()
_aws_cache: dict[str, tuple[float, str]] = {}

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
    """Resolve a whole-string reference; any other value is returned as is."""
    match = _REFERENCE.match(value)
    if match is None:
        return value
    return _resolve(*match.groups())


def resolve_embedded(value: str) -> str:
    """Resolve every reference inside ``value`` (``Bearer ${env:TOKEN}``)."""
    if "${" not in value:
        return value
    return _EMBEDDED.sub(lambda match: _resolve(match[1], match[2]), value)


def resolve_all(value: Any) -> Any:
    """``value`` with every reference in its strings resolved (dicts and lists walked)."""
    if isinstance(value, str):
        return resolve_embedded(value)
    if isinstance(value, dict):
        return {key: resolve_all(item) for key, item in value.items()}
    if isinstance(value, list):
        return [resolve_all(item) for item in value]
    return value


def has_reference(value: Any) -> bool:
    if isinstance(value, str):
        return _EMBEDDED.search(value) is not None
    if isinstance(value, dict):
        return any(has_reference(item) for item in value.values())
    if isinstance(value, list):
        return any(has_reference(item) for item in value)
    return False


def _resolve(kind: str, target: str) -> str:
    if kind == "env":
        if target not in os.environ:
            raise ConfigError(f"secret reference ${{env:{target}}}: variable is not set")
        value = os.environ[target]
    elif kind == "file":
        try:
            value = Path(target).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"secret reference ${{file:{target}}}: {exc.strerror}") from None
    else:
        value = _aws_secret(target)
    _remember(value)
    return value


def _aws_secret(target: str) -> str:
    """``name#key`` from AWS Secrets Manager (the whole secret string without ``#key``)."""
    cached = _aws_cache.get(target)
    if cached is not None and time.monotonic() - cached[0] < AWS_CACHE_SECONDS:
        return cached[1]
    name = target.partition("#")[0]
    try:
        import botocore.session
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:  # pragma: no cover - the aws extra is not installed
        raise ConfigError(
            f"secret reference ${{aws-sm:{target}}}: needs the 'aws' extra (botocore)"
        ) from None
    session = botocore.session.get_session()
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    client = session.create_client(
        "secretsmanager", region_name=region, endpoint_url=os.environ.get("AWS_ENDPOINT_URL")
    )
    try:
        secret = client.get_secret_value(SecretId=name).get("SecretString") or ""
    except (BotoCoreError, ClientError) as exc:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code") or type(exc).__name__
        raise ConfigError(f"secret reference ${{aws-sm:{target}}}: {code}") from None
    return _cache_aws(target, secret)


def aws_references(value: Any) -> set[str]:
    """The ``${aws-sm:...}`` targets in ``value``'s strings (dicts and lists walked)."""
    if isinstance(value, str):
        return {target for kind, target in _EMBEDDED.findall(value) if kind == "aws-sm"}
    if isinstance(value, dict):
        return set().union(*(aws_references(item) for item in value.values()))
    if isinstance(value, list):
        return set().union(*(aws_references(item) for item in value))
    return set()


async def prefetch(value: Any) -> None:
    """Fetch ``value``'s Secrets Manager references through aiobotocore, without blocking
    the event loop, so resolving them next finds them cached."""
    targets = {
        target
        for target in aws_references(value)
        if target not in _aws_cache or time.monotonic() - _aws_cache[target][0] >= AWS_CACHE_SECONDS
    }
    if not targets:
        return
    try:
        from aiobotocore.session import get_session
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:  # pragma: no cover - the aws extra is not installed
        return  # resolved (and refused with the reason) synchronously
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    async with get_session().create_client(
        "secretsmanager", region_name=region, endpoint_url=endpoint
    ) as client:
        for target in sorted(targets):
            name = target.partition("#")[0]
            try:
                answer = await client.get_secret_value(SecretId=name)
            except (BotoCoreError, ClientError):
                continue  # the synchronous path says why, with the reference
            _cache_aws(target, answer.get("SecretString") or "")


def _cache_aws(target: str, secret: str) -> str:
    """Cache and remember the value ``target`` (``name#key``) picks from ``secret``."""
    key = target.partition("#")[2]
    value = secret
    if key:
        try:
            fields = orjson.loads(secret)
        except orjson.JSONDecodeError:
            raise ConfigError(
                f"secret reference ${{aws-sm:{target}}}: the secret is not JSON, so it has "
                f"no key {key!r}"
            ) from None
        if not isinstance(fields, dict) or key not in fields:
            raise ConfigError(f"secret reference ${{aws-sm:{target}}}: no key {key!r}")
        value = str(fields[key])
    _remember(secret)
    _remember(value)
    _aws_cache[target] = (time.monotonic(), value)
    return value


def _remember(value: str) -> None:
    if len(value) >= REDACT_MIN:
        with _resolved_lock:
            _resolved.add(value)


def redact(text: str) -> str:
    """``text`` with every secret value this process resolved replaced by ``***``."""
    if not _resolved:
        return text
    for value in sorted(_resolved, key=len, reverse=True):
        if value in text:
            text = text.replace(value, MASK)
    return text


def redact_value(value: Any) -> Any:
    """``value`` (JSON-like) with secrets redacted in every string."""
    if not _resolved:
        return value
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {
            redact(str(k)) if isinstance(k, str) else k: redact_value(v) for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact_value(item) for item in value]
    return value


class RedactingFilter(logging.Filter):
    """Redacts resolved secrets from every log record (its message and arguments)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _resolved:
            record.msg = redact(record.getMessage())
            record.args = None
            if record.exc_text:
                record.exc_text = redact(record.exc_text)
        return True


def is_reference(value: str) -> bool:
    return _REFERENCE.match(value) is not None or (
        _EMBEDDED.search(value) is not None and not _credential_outside_references(value)
    )


def _credential_outside_references(value: str) -> bool:
    """Whether the text around a string's references looks like a credential."""
    rest = _EMBEDDED.sub("", value)
    return any(shape.search(rest) for _, shape in _CREDENTIAL_SHAPES)


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
