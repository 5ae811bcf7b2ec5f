"""One error root for headwater.

Retries and circuit breakers read ``retriable``, never the message text. Errors of the
libraries at the edges (aiokafka, the cloud SDKs) are wrapped into this root where they
are caught (``log.kafka.wrapped``, each bridge's ``NotConnected``); ``retriable(exc)``
answers for anything else: a broken connection or a timeout is worth trying again, a
bug is not.
"""

from __future__ import annotations


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
    """A task attempt failed (raised, exited non-zero or timed out)."""

    retriable = True


def retriable(exc: BaseException) -> bool:
    """Whether trying again may succeed: the error's own flag for headwater's errors (and
    for aiokafka's, which carry the same flag), true for lost connections and timeouts."""
    flag = getattr(exc, "retriable", None)
    if isinstance(flag, bool):
        return flag
    return isinstance(exc, ConnectionError | TimeoutError)
