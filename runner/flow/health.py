"""Health of the cloud services tasks need: what a task's ``needs_services`` names, and
whether each is healthy now. Pure, the clock injected; ``headwater.runner.probes`` runs the
probes this module asks for and reports their results.

A service is written as text in a pipeline file (``aws.s3:bucket``, ``tcp://db:5432``,
``https://warehouse.internal/health``); ``parse_service`` turns it into a ``ServiceSpec``
(the text itself is its name). ``Health`` schedules probes and keeps each service's state:

- a service starts healthy: one never probed yet, or not watched, holds nothing;
- it becomes unhealthy after ``unhealthy_after`` probes in a row failed; one probe that
  succeeds makes it healthy again;
- a healthy service is probed every ``interval`` seconds; after a failed probe (the
  service is suspect or unhealthy) every ``recheck`` seconds (``min(interval, 2 s)`` by
  default), so an outage is confirmed and a recovery noticed within seconds.

What must hold: the first probe of a service is due as soon as it is watched; a probe is
never started while the previous one of the same service has not reported; every
transition is reported exactly once, in order, by ``changes()``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import SplitResult, urlsplit

from headwater.runner.flow.gate import REASON_CHARS, Change

Kind = Literal["http", "tcp", "aws.s3", "aws.sqs", "gcp.pubsub", "azure.servicebus"]
CLOUD_KINDS: tuple[Kind, ...] = ("aws.s3", "aws.sqs", "gcp.pubsub", "azure.servicebus")
_CLOUD: dict[str, Kind] = {kind: kind for kind in CLOUD_KINDS}
#: Longest service text accepted.
MAX_CHARS = 500
#: Seconds between probes of a service whose last probe failed (unless ``interval`` is less).
RECHECK = 2.0

_TARGETS: dict[str, tuple[re.Pattern[str], str]] = {
    "aws.s3": (re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]"), "an S3 bucket name"),
    "aws.sqs": (
        re.compile(r"https?://[^/?#]+/.+|[A-Za-z0-9_-]{1,80}(\.fifo)?"),
        "an SQS queue name or queue URL",
    ),
    "gcp.pubsub": (
        re.compile(r"(projects/[A-Za-z0-9.:_-]+/topics/)?[A-Za-z][A-Za-z0-9._~%+-]{2,254}"),
        "projects/PROJECT/topics/TOPIC or a topic id",
    ),
    "azure.servicebus": (
        re.compile(r"[A-Za-z0-9][A-Za-z0-9._~-]*(/subscriptions/[A-Za-z0-9][A-Za-z0-9._~-]*)?"),
        "a queue name, or TOPIC/subscriptions/SUBSCRIPTION",
    ),
}
_FORMS = (
    "http(s)://URL, tcp://HOST:PORT, aws.s3[:BUCKET], aws.sqs[:QUEUE], "
    "gcp.pubsub[:TOPIC], azure.servicebus[:QUEUE]"
)


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """One service a task needs: ``name`` the text as written (its id), ``kind``, and
    ``target``: the URL, ``host:port``, bucket, queue, topic; ``""`` for a cloud kind means
    the service itself (reachable, credentials accepted)."""

    name: str
    kind: Kind
    target: str = ""


def parse_service(text: str) -> ServiceSpec:
    """The ``ServiceSpec`` written as ``text``; ``ValueError`` naming the text otherwise."""
    if not isinstance(text, str):
        raise ValueError(f"service {text!r}: expected text such as {_FORMS}")
    if not text:
        raise ValueError(f"service name is empty: expected one of {_FORMS}")
    if len(text) > MAX_CHARS:
        raise ValueError(f"service {text[:40]!r}...: longer than {MAX_CHARS} characters")
    if any(char.isspace() or not char.isprintable() for char in text):
        raise ValueError(f"service {text!r}: contains whitespace or control characters")
    scheme, colon, rest = text.partition(":")
    if colon and rest.startswith("//"):
        return _url(text, scheme.lower())
    kind = _CLOUD.get(scheme)
    if kind is None:
        raise ValueError(f"service {text!r}: unknown kind {scheme!r}; expected one of {_FORMS}")
    if colon and not rest:
        raise ValueError(f"service {text!r}: nothing after ':' (write {kind} for the service)")
    pattern, what = _TARGETS[kind]
    if rest and pattern.fullmatch(rest) is None:
        raise ValueError(f"service {text!r}: {rest!r} is not {what}")
    return ServiceSpec(text, kind, rest)


def _url(text: str, scheme: str) -> ServiceSpec:
    if scheme not in ("http", "https", "tcp"):
        raise ValueError(f"service {text!r}: unknown scheme {scheme!r}; expected one of {_FORMS}")
    try:
        parts = urlsplit(text)
    except ValueError as exc:  # a bracket left open: the message does not quote the text
        raise ValueError(f"service {text!r}: not a valid URL ({exc})") from None
    if "@" in parts.netloc:  # checked before the port, whose error would quote the password
        raise ValueError(
            f"service {_redacted(text)!r}: a URL must not embed credentials (user:password@); "
            "keep them in a secret reference such as ${env:NAME}"
        )
    try:
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        raise ValueError(f"service {text!r}: not a valid URL ({exc})") from None
    if not host:
        raise ValueError(f"service {text!r}: the URL has no host")
    if scheme != "tcp":
        return ServiceSpec(text, "http", text)
    if port is None or port == 0:
        raise ValueError(f"service {text!r}: expected tcp://HOST:PORT with a port 1-65535")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"service {text!r}: expected tcp://HOST:PORT and nothing after it")
    return ServiceSpec(text, "tcp", _host_port(parts, port))


def _host_port(parts: SplitResult, port: int) -> str:
    host = parts.hostname or ""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _redacted(text: str) -> str:
    """``text`` with whatever sits before an ``@`` in the URL's authority hidden."""
    netloc = urlsplit(text).netloc
    return text.replace(netloc, "***@" + netloc.rpartition("@")[2], 1)


@dataclass(slots=True)
class _Service:
    spec: ServiceSpec
    due_at: float  # when the next probe may start
    healthy: bool = True
    failures: int = 0  # failed probes in a row
    reason: str = ""  # the last failure's error text
    since: float | None = None  # when the current state began (None: never probed)
    checked_at: float | None = None  # when the last probe reported
    probing: bool = False  # a probe was handed out by due() and has not reported


class Health:
    """The state of every watched service and when to probe it next.

    ``timeout`` bounds one probe (the prober enforces it: a probe that does not answer in
    time counts as failed). ``since`` in ``states()`` and in changes is a reading of
    ``clock``: only differences matter here, so the worker passes ``time.monotonic``.
    """

    def __init__(
        self,
        clock: Callable[[], float],
        interval: float = 10.0,
        unhealthy_after: int = 2,
        timeout: float = 5.0,
        recheck: float | None = None,
    ) -> None:
        if min(interval, timeout) <= 0 or (recheck is not None and recheck <= 0):
            raise ValueError("interval, timeout and recheck must be positive")
        if unhealthy_after < 1:
            raise ValueError("unhealthy_after must be at least 1")
        self._clock = clock
        self.interval = interval
        self.unhealthy_after = unhealthy_after
        self.timeout = timeout
        self.recheck = min(interval, RECHECK) if recheck is None else recheck
        self._services: dict[str, _Service] = {}
        self._changes: list[Change] = []

    def watch(self, spec: ServiceSpec) -> None:
        """Start watching ``spec`` (again watching a name already watched changes nothing);
        its first probe is due now."""
        if spec.name not in self._services:
            self._services[spec.name] = _Service(spec, due_at=self._clock())

    def unwatch(self, name: str) -> None:
        """Stop watching ``name`` (no task needs it any more); a probe of it still running
        reports into nothing, and no change is emitted."""
        self._services.pop(name, None)

    def watched(self) -> list[ServiceSpec]:
        return [service.spec for service in self._services.values()]

    def due(self) -> list[ServiceSpec]:
        """The probes to start now, each marked running until its ``result``."""
        now = self._clock()
        started = []
        for service in self._services.values():
            if not service.probing and service.due_at <= now:
                service.probing = True
                started.append(service.spec)
        return started

    def next_due(self) -> float | None:
        """Seconds until the next probe is due (0 if one is now), or None while none can
        be (nothing watched, or every probe running)."""
        waiting = [s.due_at for s in self._services.values() if not s.probing]
        return max(0.0, min(waiting) - self._clock()) if waiting else None

    def result(self, spec: ServiceSpec, error: str | None) -> None:
        """A probe handed out by ``due`` finished: ``error`` None if the service answered
        healthy, else why not. A result for a service not watched (or not probing) is
        ignored."""
        service = self._services.get(spec.name)
        if service is None or not service.probing or service.spec != spec:
            return
        now = self._clock()
        service.probing, service.checked_at = False, now
        if service.since is None:
            service.since = now
        if error is None:
            self._succeeded(service, now)
        else:
            self._failed(service, error, now)

    def _succeeded(self, service: _Service, now: float) -> None:
        failures, service.failures = service.failures, 0
        service.due_at = now + self.interval
        if not service.healthy:
            data = self._data(service, reason="", failures=failures)
            data["unhealthy_for_s"] = round(now - (service.since or now), 3)
            service.healthy, service.since, service.reason = True, now, ""
            data["since"] = now
            self._changes.append(Change("service.healthy", _scope(service), data))

    def _failed(self, service: _Service, error: str, now: float) -> None:
        service.failures += 1
        service.reason = (error or "probe failed")[:REASON_CHARS]
        service.due_at = now + self.recheck
        if service.healthy and service.failures >= self.unhealthy_after:
            service.healthy, service.since = False, now
            data = self._data(service, reason=service.reason, failures=service.failures)
            self._changes.append(Change("service.unhealthy", _scope(service), data))

    def unhealthy(self, name: str) -> str | None:
        """Why ``name`` holds the tasks needing it (a sentence ending in the last probe's
        error), while it is unhealthy; None when healthy, not probed yet or not watched."""
        service = self._services.get(name)
        if service is None or service.healthy:
            return None
        return f"service {name} is unhealthy ({service.failures} failed probes): {service.reason}"

    def holding(self, names: Iterable[str]) -> str | None:
        """``unhealthy`` of the first of ``names`` that is unhealthy (a task's needs)."""
        for name in names:
            reason = self.unhealthy(name)
            if reason is not None:
                return reason
        return None

    def states(self) -> dict[str, dict[str, Any]]:
        """Each watched service's state (``unknown`` until its first probe reported)."""
        return {
            name: {
                "kind": service.spec.kind,
                "target": service.spec.target,
                "state": _state(service),
                "reason": service.reason if not service.healthy else "",
                "failures": service.failures,
                "since": service.since,
                "checked_at": service.checked_at,
                "probing": service.probing,
            }
            for name, service in self._services.items()
        }

    def changes(self) -> list[Change]:
        """The transitions since the last call, in order."""
        changes, self._changes = self._changes, []
        return changes

    def _data(self, service: _Service, reason: str, failures: int) -> dict[str, Any]:
        spec = service.spec
        return {
            "service": spec.name,
            "kind": spec.kind,
            "reason": reason,
            "failures": failures,
            "since": service.since,
        }


def _scope(service: _Service) -> str:
    return f"service {service.spec.name}"


def _state(service: _Service) -> str:
    if service.checked_at is None:
        return "unknown"
    return "healthy" if service.healthy else "unhealthy"
