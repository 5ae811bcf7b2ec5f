"""One error root for headwater.

Retries and circuit breakers read ``retriable``, never the message text. Errors of the
libraries at the edges (aiokafka, the cloud SDKs) are wrapped into this root where they
are caught (``log.kafka.wrapped``, each bridge's ``NotConnected``); ``retriable(exc)``
answers for anything else: a broken connection or a timeout is worth trying again, a
bug is not.
"""

from __future__ import annotations

import errno


class HeadwaterError(Exception):
    """Root of every error headwater raises on purpose."""

    retriable: bool = False


class NotConnected(HeadwaterError):
    """A source or sink lost its connection; the engine reconnects with backoff."""

    retriable = True


class KafkaUnavailable(HeadwaterError):
    """Kafka did not acknowledge a write in time; nothing was acked on its behalf."""

    retriable = True


class KafkaFailed(HeadwaterError):
    """An aiokafka error that reached a component, wrapped once at the edge (``log.kafka``);
    ``retriable`` is aiokafka's own verdict, the original error is the ``__cause__``."""

    def __init__(self, message: str, retriable: bool) -> None:
        super().__init__(message)
        self.retriable = retriable


class BadMessage(HeadwaterError):
    """A message that can never become a valid event; it goes to the DLQ with this reason."""


class RecordTooLarge(BadMessage):
    """A record headwater was about to write is over the size Kafka takes; it was not sent."""

    def __init__(self, what: str, size: int, limit: int) -> None:
        super().__init__(f"{what} is {size:,} bytes, over the {limit:,}-byte record limit")
        self.size = size
        self.limit = limit


class ConfigError(HeadwaterError):
    """Settings or a pipeline file are invalid; the process must not start with them."""


class PipelineErrors(ConfigError):
    """One or more pipeline files failed validation.

    ``problems`` are ``file:line: field: message`` lines, one per problem.
    """

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class TaskFailed(HeadwaterError):
    """A task attempt failed (raised, exited non-zero or timed out). ``retriable``: the
    failure looks like the task's service failing (``retriable(cause)``), not its code;
    only those count against a route's circuit breaker."""

    def __init__(self, message: str, retriable: bool = False, final: bool = False) -> None:
        super().__init__(message)
        self.retriable = retriable
        #: no later attempt can succeed (an HTTP 4xx, ``Permanent``): not retried
        self.final = final


class Retriable(HeadwaterError):
    """Raised by a task to say that what it called failed, not the task: the attempt fails
    (and is retried as the task's ``retries`` say) and counts against the breaker of the
    task's route, which stops dispatching to a service that keeps failing.

    ``raise Retriable("warehouse answered 503")``; ``raise Retriable(...) from exc`` keeps
    the cause."""

    retriable = True


class Permanent(HeadwaterError):
    """Raised by a task to say that trying again cannot help (bad input, a 4xx answer):
    the attempt fails and is not retried, whatever the task's ``retries``."""

    retriable = False


#: errno values of a service that cannot be reached (refused, reset, unreachable, timed out)
_UNREACHABLE = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.ETIMEDOUT,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ENETDOWN,
        errno.EPIPE,
    }
)
#: HTTP statuses that say "the service failed, try again": 5xx, 429 (too many requests),
#: 408 (request timeout)
_RETRIABLE_STATUS = frozenset({408, 429})
#: class names (in an exception's MRO) the usual HTTP and cloud clients give their "could
#: not connect" and "timed out" errors (requests, httpx, aiohttp, urllib3, botocore)
_UNREACHABLE_NAMES = (
    "ConnectionError",
    "ConnectError",
    "ConnectTimeout",
    "ReadTimeout",
    "TimeoutError",
    "Timeout",
    "ServerDisconnectedError",
    "EndpointConnectionError",
    "ServiceUnavailable",
    "TooManyRequests",
    "InternalServerError",
    "DeadlineExceeded",
)


def retriable(exc: BaseException) -> bool:
    """Whether trying again may succeed: the error's own flag for headwater's errors (and
    for aiokafka's, which carry the same flag); for anything else, whether it or an error
    it was raised ``from`` says the other side failed: a lost or refused connection, a
    timeout, an HTTP 5xx/429/408 status (``status``, ``status_code``, ``code`` or a
    ``response`` carrying one, as aiohttp, requests, httpx, urllib and botocore errors do).
    A ``ValueError`` or any other error of the code itself is not retriable."""
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 8:  # the chain of ``raise ... from``
        flag = getattr(current, "retriable", None)
        if isinstance(flag, bool):
            return flag
        if _says_unreachable(current):
            return True
        current, seen = current.__cause__, seen + 1
    return False


def _says_unreachable(exc: BaseException) -> bool:
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    if isinstance(exc, OSError) and exc.errno in _UNREACHABLE:
        return True
    status = _http_status(exc)
    if status is not None:
        return status >= 500 or status in _RETRIABLE_STATUS
    reason = getattr(exc, "reason", None)  # urllib's URLError wraps the socket's error
    if isinstance(reason, BaseException) and reason is not exc and _says_unreachable(reason):
        return True
    return any(cls.__name__ in _UNREACHABLE_NAMES for cls in type(exc).__mro__)


def _http_status(exc: BaseException) -> int | None:
    candidates: list[object] = [
        getattr(exc, name, None) for name in ("status", "status_code", "code")
    ]
    response = getattr(exc, "response", None)
    if isinstance(response, dict):  # botocore's ClientError
        candidates.append(response.get("ResponseMetadata", {}).get("HTTPStatusCode"))
    elif response is not None:
        candidates += [getattr(response, n, None) for n in ("status_code", "status")]
    for value in candidates:
        if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599:
            return value
    return None
