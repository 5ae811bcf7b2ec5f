"""Typed settings of every bridge, each declaring its bridge to the registry.

This module imports no cloud SDK (see ``headwater.bridges.registry``): it is what lets
``headwater dev`` list every source's flags while importing, say, the Pub/Sub SDK only
when a ``--pubsub`` source is built. A field's default is the source's default; fields
with a ``flag`` are ``headwater dev`` options shared by all sources of that bridge;
``secret`` fields must be references (``${env:NAME}``/``${file:/path}``).

Adding a bridge: its settings class here, its module (source class + ``@mapper``), tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from headwater.bridges.registry import BridgeSettings, bridge, option
from headwater.runner.errors import ConfigError


@bridge(
    "sqs",
    source="headwater.bridges.sqs:SqsSource",
    extra="aws",
    flag="--sqs",
    metavar="QUEUE_URL",
    help="an SQS queue (S3 notifications or JSON messages)",
    value="queue_url",
)
@dataclass(frozen=True, kw_only=True)
class SqsSettings(BridgeSettings):
    queue_url: str
    endpoint_url: str | None = option(
        None,
        flag="--aws-endpoint",
        help="AWS endpoint URL (default: AWS_ENDPOINT_URL or AWS itself)",
    )
    region: str | None = option(None, flag="--aws-region", help="AWS region (default: AWS chain)")
    wait_seconds: int = 10  # ReceiveMessage long poll
    nack_delay: int = 5  # visibility timeout of a message given back


@bridge(
    "pubsub",
    source="headwater.bridges.pubsub:PubSubSource",
    extra="gcp",
    flag="--pubsub",
    metavar="SUBSCRIPTION",
    help="projects/P/subscriptions/S (PUBSUB_EMULATOR_HOST honoured)",
    value="subscription",
)
@dataclass(frozen=True, kw_only=True)
class PubSubSettings(BridgeSettings):
    subscription: str
    max_outstanding: int = 1000  # server-side flow control of the stream
    ack_deadline: int = 15
    wait: float = 1.0


@bridge(
    "servicebus",
    source="headwater.bridges.servicebus:ServiceBusSource",
    extra="azure",
    flag="--servicebus",
    metavar="ENTITY",
    help="a queue, or TOPIC/subscriptions/SUB",
    value="entity",
)
@dataclass(frozen=True, kw_only=True)
class ServiceBusSettings(BridgeSettings):
    entity: str
    connection: str = option(
        "${env:SERVICEBUS_CONNECTION_STRING}",
        flag="--servicebus-connection",
        metavar="REF",
        help="secret reference to the connection string",
        secret=True,
    )
    wait: float = 1.0
    lock_renewal: float = 300.0


def webhook_address(address: str) -> dict[str, Any]:
    """``HOST:PORT`` (``:PORT`` listens on 127.0.0.1) as webhook settings."""
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        raise ConfigError(f"--webhook {address!r}: expected HOST:PORT")
    return {"host": host or "127.0.0.1", "port": int(port)}


@bridge(
    "webhook",
    source="headwater.bridges.webhook:WebhookSource",
    flag="--webhook",
    metavar="HOST:PORT",
    help="HTTP ingress for CloudEvents and JSON (POST /events)",
    value=webhook_address,
)
@dataclass(frozen=True, kw_only=True)
class WebhookSettings(BridgeSettings):
    host: str = "127.0.0.1"
    port: int = 8080
    path: str = "/events"
    token: str | None = option(
        None,
        flag="--webhook-token",
        metavar="REF",
        help="secret reference to the bearer token the webhook requires",
        secret=True,
    )
    max_bytes: int = 1 << 20
    queue_size: int = 1000
    reply_timeout: float = 30.0
    wait: float = 1.0


@bridge(
    "filedrop",
    source="headwater.bridges.filedrop:FileDropSource",
    flag="--drop",
    metavar="DIR",
    help="a local drop folder; finished files move to DIR/processed/",
    value="directory",
)
@dataclass(frozen=True, kw_only=True)
class FileDropSettings(BridgeSettings):
    directory: str
    settle: float = 1.0  # seconds a file must stay unchanged to count as finished
    poll: float = 0.25
    wait: float = 1.0
