"""Typed settings, built from the environment with defaults.

Secrets are never literals here: SASL passwords come from references (``${env:NAME}``,
``${file:/path}``) resolved when the client is built, and are never printed.
"""

from __future__ import annotations

import os
import re
import socket
import ssl
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from headwater.runner.durations import parse_duration
from headwater.runner.errors import ConfigError
from headwater.runner.flow.breaker import BreakerSpec
from headwater.runner.flow.pressure import Bounds
from headwater.runner.secrets import credential_problem, is_reference, resolve_reference

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
DEDUP_RETENTION = 7 * 86400.0
MAX_OUTPUT_BYTES = 256 * 1024
WORKER_CONCURRENCY = 32
DEFAULT_BOUNDS = Bounds()
DEFAULT_BREAKER = BreakerSpec()  # 5 retriable failures in a row, 30 s cooldown
TASK_TIMEOUT = 3600.0  # a task without ``timeout:`` is stopped after an hour
MAX_OUTPUT_CEILING = 768 * 1024


@dataclass(frozen=True)
class Topics:
    """Names of the central log's topics, all under one prefix (default ``hw.``)."""

    prefix: str = "hw."

    @property
    def events(self) -> str:
        return f"{self.prefix}events"

    @property
    def control(self) -> str:
        return f"{self.prefix}control"

    @property
    def runs(self) -> str:
        """The run table's changelog (compacted, co-partitioned with ``control``)."""
        return f"{self.prefix}runs"

    @property
    def dlq(self) -> str:
        return f"{self.prefix}dlq"

    @property
    def completions(self) -> str:
        return f"{self.prefix}completions"

    @property
    def status(self) -> str:
        """Flow-control transitions (breakers, pauses) as CloudEvents, keyed by route."""
        return f"{self.prefix}status"

    @property
    def lineage(self) -> str:
        """OpenLineage RunEvents of finished runs and their tasks (``lineage``)."""
        return f"{self.prefix}lineage"

    @property
    def cancels(self) -> str:
        """Runs cancelled while attempts were out: every worker stops those (``cancels``)."""
        return f"{self.prefix}cancels"

    @property
    def heartbeats(self) -> str:
        """Workers' announcements: route, region, instance, free capacity (``routing``)."""
        return f"{self.prefix}heartbeats"

    def tasks(self, route: str) -> str:
        return f"{self.prefix}tasks.{route}"

    def group(self, role: str) -> str:
        """Consumer group id of one role (router, control, workers.<route>)."""
        return f"{self.prefix}{role}"


@dataclass(frozen=True)
class KafkaSettings:
    """How to reach the broker. ``password`` is a secret reference, resolved late."""

    bootstrap: str = DEFAULT_BOOTSTRAP
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    partitions: int = 3
    replication: int = 1
    request_timeout_ms: int = 15_000
    #: TLS (``security_protocol`` SSL or SASL_SSL): CA bundle, client certificate and key
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_key_password: str | None = field(default=None, repr=False)

    @property
    def write_timeout(self) -> float:
        """Seconds a process waits for Kafka to acknowledge a write before giving up."""
        return self.request_timeout_ms / 1000

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> KafkaSettings:
        """Read ``HEADWATER_KAFKA*`` variables; unknown ``HEADWATER_KAFKA_*`` keys are errors."""
        env = os.environ if env is None else env
        known = {
            "HEADWATER_KAFKA",
            "HEADWATER_KAFKA_SECURITY_PROTOCOL",
            "HEADWATER_KAFKA_SASL_MECHANISM",
            "HEADWATER_KAFKA_USERNAME",
            "HEADWATER_KAFKA_PASSWORD",
            "HEADWATER_KAFKA_PARTITIONS",
            "HEADWATER_KAFKA_REPLICATION",
            "HEADWATER_KAFKA_REQUEST_TIMEOUT_MS",
            "HEADWATER_KAFKA_PORT",  # used by the local test server scripts
            "HEADWATER_KAFKA_TLS_CA_FILE",
            "HEADWATER_KAFKA_TLS_CERT_FILE",
            "HEADWATER_KAFKA_TLS_KEY_FILE",
            "HEADWATER_KAFKA_TLS_KEY_PASSWORD",
        }
        unknown = sorted(k for k in env if k.startswith("HEADWATER_KAFKA") and k not in known)
        if unknown:
            raise ConfigError(f"unknown Kafka setting(s): {', '.join(unknown)}")
        try:
            partitions = int(env.get("HEADWATER_KAFKA_PARTITIONS", "3"))
            replication = int(env.get("HEADWATER_KAFKA_REPLICATION", "1"))
            request_timeout_ms = int(env.get("HEADWATER_KAFKA_REQUEST_TIMEOUT_MS", "15000"))
        except ValueError as exc:
            raise ConfigError(
                f"HEADWATER_KAFKA_PARTITIONS/REPLICATION/REQUEST_TIMEOUT_MS: {exc}"
            ) from None
        return cls(
            bootstrap=env.get("HEADWATER_KAFKA", DEFAULT_BOOTSTRAP),
            security_protocol=env.get("HEADWATER_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT"),
            sasl_mechanism=env.get("HEADWATER_KAFKA_SASL_MECHANISM"),
            username=env.get("HEADWATER_KAFKA_USERNAME"),
            password=env.get("HEADWATER_KAFKA_PASSWORD"),
            partitions=partitions,
            replication=replication,
            request_timeout_ms=request_timeout_ms,
            tls_ca_file=env.get("HEADWATER_KAFKA_TLS_CA_FILE"),
            tls_cert_file=env.get("HEADWATER_KAFKA_TLS_CERT_FILE"),
            tls_key_file=env.get("HEADWATER_KAFKA_TLS_KEY_FILE"),
            tls_key_password=env.get("HEADWATER_KAFKA_TLS_KEY_PASSWORD"),
        )

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments shared by every aiokafka client."""
        options: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap,
            "security_protocol": self.security_protocol,
        }
        if self.security_protocol in ("SSL", "SASL_SSL"):
            options["ssl_context"] = self._ssl_context()
        if self.sasl_mechanism:
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.username
            if self.password:
                options["sasl_plain_password"] = resolve_reference(self.password)
        return options

    def _ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.tls_ca_file)
        if self.tls_cert_file:
            password = resolve_reference(self.tls_key_password) if self.tls_key_password else None
            context.load_cert_chain(self.tls_cert_file, self.tls_key_file, password)
        return context


@dataclass(frozen=True)
class Settings:
    """Everything a headwater process needs to reach the log."""

    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    topics: Topics = field(default_factory=Topics)
    #: this process's stable name; runner processes sharing one host need distinct ones
    instance: str = field(default_factory=socket.gethostname)
    #: how long a finished run's marker is kept: a trigger event seen again within it
    #: starts nothing; after it, the marker is deleted (memory and changelog)
    dedup_retention: float = DEDUP_RETENTION
    #: the largest task output (encoded JSON) a task may return; a larger one fails it
    max_output_bytes: int = MAX_OUTPUT_BYTES
    #: the timeout of a task whose pipeline file gives none
    task_timeout: float = TASK_TIMEOUT
    #: where the control partitions' local stores live (a folder per instance in it)
    state_root: Path = field(default_factory=lambda: default_state_root(os.environ))
    #: keep warm copies of the control partitions this process does not own
    standby: bool = False
    #: each route's circuit breaker (a task's ``breaker:`` replaces it for that task);
    #: None: no breaker unless a task has its own
    breaker: BreakerSpec | None = field(default_factory=BreakerSpec)
    #: task requests one worker runs at a time (per route)
    worker_concurrency: int = WORKER_CONCURRENCY
    #: seconds between probes of a healthy service a task needs (``needs_services:``)
    health_interval: float = 10.0
    #: seconds a probe may take before it counts as failed
    health_timeout: float = 5.0
    #: how much waiting work makes the router and the bridges stop taking more (0: no bound)
    bounds: Bounds = field(default_factory=Bounds)
    #: write OpenLineage events of finished runs to ``hw.lineage`` (``HEADWATER_LINEAGE``)
    lineage: bool = False
    #: the OpenLineage HTTP backend the events are also sent to (``HEADWATER_LINEAGE_URL``)
    lineage_url: str | None = field(default=None, repr=False)
    #: its API key, a secret reference (``HEADWATER_LINEAGE_API_KEY``)
    lineage_api_key: str | None = field(default=None, repr=False)
    #: USD per GB leaving each cloud (``HEADWATER_EGRESS_PRICES=aws=0.09,gcp=0.12``)
    egress_prices: dict[str, float] = field(default_factory=dict)
    #: where alerts are posted (a secret reference to a Slack-compatible webhook URL)
    alert_webhook: str | None = field(default=None, repr=False)
    #: seconds between two alerts of one kind about one pipeline or route
    alert_every: float = 60.0

    @property
    def state_dir(self) -> Path:
        """This instance's folder of local state: one store per control partition."""
        return self.state_root / re.sub(r"[^A-Za-z0-9._-]", "_", self.instance)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        dedup_retention = _positive_duration(env, "HEADWATER_DEDUP_RETENTION", DEDUP_RETENTION)
        task_timeout = _positive_duration(env, "HEADWATER_TASK_TIMEOUT", TASK_TIMEOUT)
        max_output = env.get("HEADWATER_MAX_OUTPUT_BYTES", str(MAX_OUTPUT_BYTES))
        if not max_output.isdigit() or not 0 < int(max_output) <= MAX_OUTPUT_CEILING:
            raise ConfigError(
                f"HEADWATER_MAX_OUTPUT_BYTES: {max_output!r} is not a byte count from 1 to "
                f"{MAX_OUTPUT_CEILING} (a task output must fit a Kafka record with room to spare)"
            )
        standby = env.get("HEADWATER_STANDBY", "0").strip().lower()
        if standby not in ("0", "1", "true", "false", "yes", "no", ""):
            raise ConfigError(f"HEADWATER_STANDBY: {standby!r} is not 1/0, true/false or yes/no")
        concurrency = env.get("HEADWATER_WORKER_CONCURRENCY", str(WORKER_CONCURRENCY))
        if not concurrency.isdigit() or not 0 < int(concurrency) <= 10_000:
            raise ConfigError(
                f"HEADWATER_WORKER_CONCURRENCY: {concurrency!r} is not a count from 1 to 10000"
            )
        webhook = env.get("HEADWATER_ALERT_WEBHOOK") or None
        if webhook is not None and not is_reference(webhook):
            raise ConfigError(
                "HEADWATER_ALERT_WEBHOOK: a webhook URL is a secret: give a reference such as "
                "${env:SLACK_WEBHOOK_URL} or ${file:/run/secrets/webhook}"
            )
        lineage = env.get("HEADWATER_LINEAGE", "0").strip().lower()
        if lineage not in ("0", "1", "true", "false", "yes", "no", ""):
            raise ConfigError(f"HEADWATER_LINEAGE: {lineage!r} is not 1/0, true/false or yes/no")
        lineage_url = _lineage_url(env.get("HEADWATER_LINEAGE_URL") or None)
        api_key = env.get("HEADWATER_LINEAGE_API_KEY") or None
        if api_key is not None and not is_reference(api_key):
            raise ConfigError(
                "HEADWATER_LINEAGE_API_KEY: an API key is a secret: give a reference such as "
                "${env:MARQUEZ_API_KEY} or ${file:/run/secrets/marquez}"
            )
        return cls(
            lineage=lineage in ("1", "true", "yes") or lineage_url is not None,
            lineage_url=lineage_url,
            egress_prices=_prices(env.get("HEADWATER_EGRESS_PRICES", "")),
            lineage_api_key=api_key,
            alert_webhook=webhook,
            alert_every=_positive_duration(env, "HEADWATER_ALERT_EVERY", 60.0),
            kafka=KafkaSettings.from_env(env),
            topics=Topics(prefix=env.get("HEADWATER_TOPIC_PREFIX", "hw.")),
            instance=env.get("HEADWATER_INSTANCE") or socket.gethostname(),
            dedup_retention=dedup_retention,
            max_output_bytes=int(max_output),
            task_timeout=task_timeout,
            state_root=Path(env["HEADWATER_STATE_DIR"])
            if env.get("HEADWATER_STATE_DIR")
            else default_state_root(env),
            standby=standby in ("1", "true", "yes"),
            breaker=_breaker(env),
            worker_concurrency=int(concurrency),
            health_interval=_positive_duration(env, "HEADWATER_HEALTH_INTERVAL", 10.0),
            health_timeout=_positive_duration(env, "HEADWATER_HEALTH_TIMEOUT", 5.0),
            bounds=Bounds(
                pending_runs=_count(env, "HEADWATER_MAX_PENDING_RUNS", DEFAULT_BOUNDS.pending_runs),
                pending_tasks=_count(
                    env, "HEADWATER_MAX_PENDING_TASKS", DEFAULT_BOUNDS.pending_tasks
                ),
                events_lag=_count(env, "HEADWATER_MAX_EVENTS_LAG", DEFAULT_BOUNDS.events_lag),
            ),
        )


def _prices(text: str) -> dict[str, float]:
    """``HEADWATER_EGRESS_PRICES``: ``cloud=USD per GB`` pairs, comma-separated."""
    prices: dict[str, float] = {}
    for pair in (part.strip() for part in text.split(",")):
        if not pair:
            continue
        cloud, _, price = pair.partition("=")
        try:
            value = float(price)
        except ValueError:
            value = -1.0
        if not re.fullmatch(r"[a-z][a-z0-9-]{0,30}", cloud.strip()) or not 0 <= value <= 100:
            raise ConfigError(
                f"HEADWATER_EGRESS_PRICES: {pair!r} is not cloud=price (a cloud name such as "
                "aws, and US dollars per GB from 0 to 100), e.g. aws=0.09,gcp=0.12"
            )
        prices[cloud.strip()] = value
    return prices


def _lineage_url(url: str | None) -> str | None:
    """``HEADWATER_LINEAGE_URL``: a reference, or an http(s) URL without credentials."""
    if url is None or is_reference(url):
        return url
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"HEADWATER_LINEAGE_URL: {url!r} is not an http(s) URL")
    if parts.username or parts.password or credential_problem("url", url):
        raise ConfigError(
            "HEADWATER_LINEAGE_URL: a URL with credentials in it is a secret: give a "
            "reference such as ${env:MARQUEZ_URL}, or the key as HEADWATER_LINEAGE_API_KEY"
        )
    return url


def _count(env: Mapping[str, str], name: str, default: int) -> int:
    """A bound on waiting work from ``env[name]``: a count, 0 for none."""
    given = env.get(name, str(default)).strip().replace("_", "")
    if not given.isdigit() or int(given) > 1_000_000_000:
        raise ConfigError(f"{name}: {given!r} is not a count from 0 (no bound) to 1000000000")
    return int(given)


def _breaker(env: Mapping[str, str]) -> BreakerSpec | None:
    """The routes' breaker: ``HEADWATER_BREAKER_FAILURES`` consecutive retriable failures
    open it (0: no route breaker), ``HEADWATER_BREAKER_COOLDOWN`` before its first probe."""
    failures = env.get("HEADWATER_BREAKER_FAILURES", str(DEFAULT_BREAKER.failures)).strip()
    if not failures.isdigit() or int(failures) > 10_000:
        raise ConfigError(
            f"HEADWATER_BREAKER_FAILURES: {failures!r} is not a count from 0 (off) to 10000"
        )
    if int(failures) == 0:
        return None
    cooldown = _positive_duration(env, "HEADWATER_BREAKER_COOLDOWN", DEFAULT_BREAKER.cooldown)
    return BreakerSpec(
        failures=int(failures),
        cooldown=cooldown,
        max_cooldown=max(DEFAULT_BREAKER.max_cooldown, cooldown),
    )


def default_state_root(env: Mapping[str, str]) -> Path:
    """``$XDG_STATE_HOME/headwater``, by default ``~/.local/state/headwater``."""
    base = env.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "headwater"


def _positive_duration(env: Mapping[str, str], name: str, default: float) -> float:
    """Seconds from the duration in ``env[name]`` (``default`` if unset); longer than 0."""
    given = env.get(name)
    try:
        seconds = default if given is None else parse_duration(given)
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None
    if seconds <= 0:
        raise ConfigError(f"{name}: must be longer than 0")
    return seconds
