"""One error root for headwater.

Retries and circuit breakers read ``retriable``, never the message text.
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


class BadMessage(HeadwaterError):
    """A message that can never become a valid event; it goes to the DLQ with this reason."""


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
