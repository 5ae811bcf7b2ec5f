"""Probing the services tasks need: the I/O side of ``headwater.runner.flow.health``.

``probe(spec, env)`` asks one service one cheap question and raises ``Unhealthy`` when the
answer is not healthy or does not come within ``within`` seconds; ``Prober.run`` starts
the probes ``Health`` says are due, concurrently (each bounded by ``Health.timeout``), and
reports each result back.

- ``http``/``https``: a GET (redirects followed); healthy iff the status is below 400;
- ``tcp``: a connection is accepted (and closed at once);
- ``aws.s3``: ``HeadBucket`` on the bucket, else ``ListBuckets``; ``aws.sqs``:
  ``GetQueueAttributes`` on the queue (its URL looked up when given a name), else
  ``ListQueues``; aiobotocore (the ``aws`` extra), one attempt, endpoint from
  ``AWS_ENDPOINT_URL_S3``/``_SQS`` or ``AWS_ENDPOINT_URL``;
- ``gcp.pubsub``: ``GetTopic``, else ``ListTopics`` of ``GOOGLE_CLOUD_PROJECT`` (a bare
  topic id is in that project too); ``PUBSUB_EMULATOR_HOST`` honoured;
- ``azure.servicebus``: peek one message of the queue (or subscription), which opens an
  AMQP connection and authenticates; without an entity, a TCP connection to the
  namespace. The connection string is ``HEADWATER_SERVICEBUS_CONNECTION`` (else
  ``SERVICEBUS_CONNECTION_STRING``, the bridge's default), itself possibly a secret
  reference.

What must hold: a probe ends within its timeout; ``Prober.run`` never raises while it
runs (any exception from a probe is that service's failure, with its text); no error
text carries a credential (SDK messages are scrubbed of keys and of the secret itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from headwater.runner.errors import HeadwaterError
from headwater.runner.flow.health import Health, ServiceSpec
from headwater.runner.secrets import is_reference, resolve_embedded

#: Longest sleep of the prober, so a newly watched service is probed within it.
IDLE_WAIT = 0.5
#: Shorter secrets are not masked in error texts (a key-like ``NAME=value`` always is).
MIN_SECRET_CHARS = 6
CONNECTION_VARIABLES = ("HEADWATER_SERVICEBUS_CONNECTION", "SERVICEBUS_CONNECTION_STRING")
_SECRET_FIELDS = ("sharedaccesskey", "sharedaccesssignature")
_KEYS = re.compile(r"((?:SharedAccessKey|AccountKey|SharedAccessSignature|sig)=)[^;&\s]+", re.I)


class Unhealthy(HeadwaterError):
    """A probe found its service unhealthy (or could not ask it)."""

    retriable = True


async def probe(spec: ServiceSpec, env: Mapping[str, str], within: float = 5.0) -> None:
    """Return if ``spec`` answers healthy within ``within`` seconds, else raise
    ``Unhealthy`` saying why (``env`` gives endpoints, projects, connection strings)."""
    try:
        async with asyncio.timeout(within):
            await _PROBES[spec.kind](spec, env, within)
    except Unhealthy:
        raise
    except TimeoutError:
        raise Unhealthy(f"no answer within {within:g} s") from None
    except ImportError as exc:  # the SDK is an extra that is not installed
        extra = spec.kind.partition(".")[0]
        raise Unhealthy(f"{exc}: install headwater[{extra}] to probe {spec.kind}") from None
    except Exception as exc:  # noqa: BLE001 - any SDK or socket error means unhealthy
        query = urlsplit(spec.target).query if spec.kind == "http" else ""
        raise Unhealthy(scrub(_describe(exc), [query])) from None


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with key-like ``NAME=value`` pairs and each of ``secrets`` masked."""
    for secret in secrets:
        if len(secret) >= MIN_SECRET_CHARS:  # masking "k" would mask every k
            text = text.replace(secret, "***")
    return _KEYS.sub(r"\1***", text)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    if isinstance(exc, HeadwaterError):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def _http(spec: ServiceSpec, env: Mapping[str, str], seconds: float) -> None:
    limits = aiohttp.ClientTimeout(total=seconds)
    async with (
        aiohttp.ClientSession(timeout=limits) as session,
        session.get(spec.target, allow_redirects=True) as response,
    ):
        if response.status >= 400:
            raise Unhealthy(f"GET answered {response.status} {response.reason or ''}".strip())


async def _tcp(spec: ServiceSpec, env: Mapping[str, str], seconds: float) -> None:
    host, _sep, port = spec.target.rpartition(":")
    await _connect(host.strip("[]"), int(port))


async def _connect(host: str, port: int) -> None:
    try:
        _reader, writer = await asyncio.open_connection(host, port)
    except OSError as exc:
        raise Unhealthy(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def _aws(spec: ServiceSpec, env: Mapping[str, str], seconds: float) -> None:
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    service = spec.kind.removeprefix("aws.")
    options: dict[str, Any] = {
        "region_name": env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
        "endpoint_url": env.get(f"AWS_ENDPOINT_URL_{service.upper()}")
        or env.get("AWS_ENDPOINT_URL"),
        "config": AioConfig(
            connect_timeout=seconds, read_timeout=seconds, retries={"max_attempts": 1}
        ),
    }
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        options.update(
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            aws_session_token=env.get("AWS_SESSION_TOKEN"),
        )
    async with get_session().create_client(service, **options) as client:
        if spec.kind == "aws.s3":
            await (client.head_bucket(Bucket=spec.target) if spec.target else client.list_buckets())
        elif not spec.target:
            await client.list_queues(MaxResults=1)
        else:
            url = spec.target
            if "://" not in url:
                url = (await client.get_queue_url(QueueName=url))["QueueUrl"]
            await client.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])


async def _pubsub(spec: ServiceSpec, env: Mapping[str, str], seconds: float) -> None:
    import grpc
    from google.pubsub_v1.services.publisher import PublisherAsyncClient
    from google.pubsub_v1.services.publisher.transports import PublisherGrpcAsyncIOTransport

    project = env.get("GOOGLE_CLOUD_PROJECT", "")
    if not spec.target.startswith("projects/") and not project:
        raise Unhealthy("GOOGLE_CLOUD_PROJECT is not set: write projects/P/topics/T")
    emulator = env.get("PUBSUB_EMULATOR_HOST")
    if emulator:
        channel = grpc.aio.insecure_channel(emulator)
        client = PublisherAsyncClient(transport=PublisherGrpcAsyncIOTransport(channel=channel))
    else:
        client = PublisherAsyncClient()
    async with client:
        if not spec.target:
            # The call fetches the first page: that answer is the question.
            await client.list_topics(
                request={"project": f"projects/{project}", "page_size": 1},
                retry=None,
                timeout=seconds,
            )
        else:
            topic = spec.target
            if not topic.startswith("projects/"):
                topic = f"projects/{project}/topics/{topic}"
            await client.get_topic(topic=topic, retry=None, timeout=seconds)


async def _servicebus(spec: ServiceSpec, env: Mapping[str, str], seconds: float) -> None:
    connection = next((env[name] for name in CONNECTION_VARIABLES if env.get(name)), "")
    if not connection:
        raise Unhealthy(f"no connection string: set {CONNECTION_VARIABLES[0]}")
    if is_reference(connection):
        connection = resolve_embedded(connection)
    fields: dict[str, str] = {}
    for part in connection.split(";"):
        key, _sep, value = part.partition("=")
        fields[key.strip().lower()] = value.strip()
    secrets = [connection, *(fields.get(k, "") for k in _SECRET_FIELDS)]
    try:
        if spec.target:
            await _peek(connection, spec.target)
        else:
            await _namespace(fields)
    except Unhealthy:
        raise
    except Exception as exc:  # noqa: BLE001 - the SDK's text may quote the connection string
        raise Unhealthy(scrub(_describe(exc), secrets)) from None


async def _peek(connection: str, entity: str) -> None:
    from azure.servicebus.aio import ServiceBusClient

    try:
        client = ServiceBusClient.from_connection_string(connection, retry_total=0)
    except ValueError:  # the SDK's message may quote the secret
        raise Unhealthy("malformed Service Bus connection string") from None
    topic, _sep, subscription = entity.partition("/subscriptions/")
    async with client:
        if subscription:
            receiver = client.get_subscription_receiver(topic, subscription)
        else:
            receiver = client.get_queue_receiver(entity)
        async with receiver:
            await receiver.peek_messages(max_message_count=1)


async def _namespace(fields: Mapping[str, str]) -> None:
    """A TCP connection to the namespace's AMQP port: no entity to ask about."""
    endpoint = fields.get("endpoint", "").removeprefix("sb://").rstrip("/")
    host, _sep, port = endpoint.partition(":")
    if not host:
        raise Unhealthy("the Service Bus connection string has no Endpoint=sb://HOST")
    plain = fields.get("usedevelopmentemulator", "").lower() == "true"
    await _connect(host, int(port) if port.isdigit() else 5672 if plain else 5671)


_PROBES = {
    "http": _http,
    "tcp": _tcp,
    "aws.s3": _aws,
    "aws.sqs": _aws,
    "gcp.pubsub": _pubsub,
    "azure.servicebus": _servicebus,
}


class Prober:
    """Runs ``health``'s due probes until ``stopping`` is set (``env`` as for ``probe``)."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    async def run(self, health: Health, stopping: asyncio.Event) -> None:
        running: dict[asyncio.Task[str | None], ServiceSpec] = {}
        stop = asyncio.ensure_future(stopping.wait())
        try:
            while not stopping.is_set():
                for spec in health.due():
                    running[asyncio.create_task(self._one(spec, health.timeout))] = spec
                hint = health.next_due()
                wait = IDLE_WAIT if hint is None else min(hint, IDLE_WAIT)
                done, _ = await asyncio.wait(
                    [*running, stop], timeout=wait, return_when=asyncio.FIRST_COMPLETED
                )
                for task in [task for task in running if task in done]:
                    health.result(running.pop(task), task.result())
        finally:
            stop.cancel()
            for task in running:
                task.cancel()
            await asyncio.gather(stop, *running, return_exceptions=True)

    async def _one(self, spec: ServiceSpec, within: float) -> str | None:
        """The error text of one probe of ``spec``, or None if it was healthy."""
        try:
            await probe(spec, self._env, within)
        except Exception as exc:  # noqa: BLE001 - whatever went wrong, the service is unhealthy
            return str(exc) or type(exc).__name__
        return None
