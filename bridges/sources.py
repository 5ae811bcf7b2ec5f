"""Building sources from the command line's flags.

Cloud SDKs are imported only for the sources asked for, so a user without the ``gcp`` or
``azure`` extra can still bridge SQS or a drop folder. Secrets (Service Bus connection
string, webhook token) must be references; a literal that looks like a credential is
refused before anything connects.
"""

from __future__ import annotations

import argparse

from headwater.bridges.base import Source
from headwater.runner.errors import ConfigError
from headwater.runner.secrets import credential_problem, is_reference


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sources (each repeatable)")
    group.add_argument(
        "--sqs",
        action="append",
        default=[],
        metavar="QUEUE_URL",
        help="an SQS queue (S3 notifications or JSON messages)",
    )
    group.add_argument(
        "--aws-endpoint",
        default=None,
        help="AWS endpoint URL (default: AWS_ENDPOINT_URL or AWS itself)",
    )
    group.add_argument("--aws-region", default=None, help="AWS region (default: AWS chain)")
    group.add_argument(
        "--pubsub",
        action="append",
        default=[],
        metavar="SUBSCRIPTION",
        help="projects/P/subscriptions/S (PUBSUB_EMULATOR_HOST honoured)",
    )
    group.add_argument(
        "--servicebus",
        action="append",
        default=[],
        metavar="ENTITY",
        help="a queue, or TOPIC/subscriptions/SUB",
    )
    group.add_argument(
        "--servicebus-connection",
        default="${env:SERVICEBUS_CONNECTION_STRING}",
        metavar="REF",
        help="secret reference to the connection string",
    )
    group.add_argument(
        "--webhook",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="HTTP ingress for CloudEvents and JSON (POST /events)",
    )
    group.add_argument(
        "--webhook-token",
        default=None,
        metavar="REF",
        help="secret reference to the bearer token the webhook requires",
    )
    group.add_argument(
        "--drop",
        action="append",
        default=[],
        metavar="DIR",
        help="a local drop folder; finished files move to DIR/processed/",
    )


def build(args: argparse.Namespace) -> list[Source]:
    for flag in ("servicebus_connection", "webhook_token"):
        value = getattr(args, flag)
        if value is not None and not is_reference(value):
            problem = credential_problem("secret", value)
            raise ConfigError(f"--{flag.replace('_', '-')}: {problem}")
    sources: list[Source] = []
    if args.sqs:
        from headwater.bridges.sqs import SqsSource  # the [aws] extra

        sources += [
            SqsSource(url, region=args.aws_region, endpoint_url=args.aws_endpoint)
            for url in args.sqs
        ]
    if args.pubsub:
        from headwater.bridges.pubsub import PubSubSource  # the [gcp] extra

        sources += [PubSubSource(subscription) for subscription in args.pubsub]
    if args.servicebus:
        from headwater.bridges.servicebus import ServiceBusSource  # the [azure] extra

        sources += [
            ServiceBusSource(entity, connection=args.servicebus_connection)
            for entity in args.servicebus
        ]
    if args.webhook:
        from headwater.bridges.webhook import WebhookSource

        for address in args.webhook:
            host, _, port = address.rpartition(":")
            if not port.isdigit():
                raise ConfigError(f"--webhook {address!r}: expected HOST:PORT")
            sources.append(WebhookSource(host or "127.0.0.1", int(port), token=args.webhook_token))
    if args.drop:
        from headwater.bridges.filedrop import FileDropSource

        sources += [FileDropSource(directory) for directory in args.drop]
    return sources
