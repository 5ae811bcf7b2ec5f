"""The recipe for a single-node KRaft Kafka broker built from Maven Central jars (no Docker).

Job: resolve the broker's jars, write ``server.properties``, format the storage, give the
command line that runs the broker, and probe it with a real metadata request.  Holds no
process state: ``services.KafkaServer`` drives these steps and owns the process.

Invariants:
- Jars are resolved again only when ``pom.xml`` changes (a stamp file records its hash).
- Storage is formatted once: an existing ``meta.properties`` means "already formatted".
- ``server.properties`` is regenerated on every start, so port changes take effect.
- Every address is loopback; topics are never auto-created.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import shutil
import subprocess
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
POM = HERE / "pom.xml"
LOG4J_CONFIG = HERE / "log4j2.yaml"
MAIN_CLASS = "kafka.Kafka"


class RecipeError(RuntimeError):
    """A tool is missing or a preparation step (Maven, storage format) failed."""


def resolve_jars(libs_dir: Path, maven_repo: Path, say: Callable[[str], None]) -> None:
    """Copy the broker's runtime jars into ``libs_dir``, unless ``pom.xml`` is unchanged."""
    stamp = libs_dir / ".pom.sha256"
    digest = hashlib.sha256(POM.read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text().strip() == digest:
        return
    say("kafka: resolving broker jars from Maven Central (first run only)…")
    shutil.rmtree(libs_dir, ignore_errors=True)
    libs_dir.mkdir(parents=True)
    _run([
        _tool("mvn"), "-q", "-B", f"-Dmaven.repo.local={maven_repo}", "-f", str(POM),
        "dependency:copy-dependencies", f"-DoutputDirectory={libs_dir}", "-DincludeScope=runtime",
    ])  # fmt: skip
    stamp.write_text(digest + "\n")


def format_storage(
    libs_dir: Path, properties: Path, data_dir: Path, say: Callable[[str], None]
) -> None:
    """Format the KRaft log directory with a fresh cluster id, unless already formatted."""
    if (data_dir / "meta.properties").exists():
        return
    say(f"kafka: formatting storage in {data_dir} (first run only)…")
    _run([
        *_java(libs_dir), "kafka.tools.StorageTool", "format",
        f"--cluster-id={new_cluster_id()}", "-c", str(properties),
    ])  # fmt: skip


def new_cluster_id() -> str:
    """A random KRaft cluster id: 16 bytes, URL-safe base64 without padding.

    Like Kafka's own ``Uuid.randomUuid``, never one that starts with ``-``: the
    storage tool's argument parser would read it as an option.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def broker_command(libs_dir: Path, properties: Path) -> list[str]:
    """The command line that runs the broker in the foreground, logging to stdout."""
    return [*_java(libs_dir, "-Xms256m", "-Xmx1g"), MAIN_CLASS, str(properties)]


def server_properties(host: str, port: int, controller_port: int, data_dir: Path) -> str:
    """``server.properties`` for a combined broker+controller node sized for a dev box."""
    settings = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{host}:{controller_port}",
        "listeners": f"PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{host}:{port}",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": str(data_dir),
        "num.partitions": "3",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "3",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "3",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "false",
        # A dev box: small segments, a day of retention, a small cleaner buffer, few threads.
        "log.segment.bytes": str(16 * 1024 * 1024),
        "log.retention.hours": "24",
        "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
        "num.network.threads": "2",
        "num.io.threads": "4",
        "num.recovery.threads.per.data.dir": "1",
        # After a kill the restarted broker must wait out its old session: keep that short.
        "broker.session.timeout.ms": "4000",
        "broker.heartbeat.interval.ms": "1000",
        # Offset commits (plain and transactional) are written by the group coordinator,
        # which by default lingers 5 ms to batch them: that is most of a commit's time on
        # a dev box, and every consume -> produce hop waits for one (bench/hops.py).
        "group.coordinator.append.linger.ms": "0",
    }
    header = "# Generated by tests/servers on every start; edits are lost.\n"
    return header + "".join(f"{key}={value}\n" for key, value in settings.items())


def answers(bootstrap: str) -> bool:
    """True if the broker at ``bootstrap`` answers a metadata request right now."""
    return _run_coroutine(_list_topics_ok(bootstrap))


async def _list_topics_ok(bootstrap: str) -> bool:
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
    try:
        await admin.start()
        await admin.list_topics()
        return True
    except (KafkaError, OSError, TimeoutError):
        return False
    finally:
        await admin.close()


def _run_coroutine(coroutine: Coroutine[Any, Any, bool]) -> bool:
    """``asyncio.run``, moved to a helper thread when this thread already runs a loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def _java(libs_dir: Path, *options: str) -> list[str]:
    return [
        _tool("java"), *options, f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
        "-cp", f"{libs_dir}/*",
    ]  # fmt: skip


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RecipeError(f"`{name}` is not on PATH (the Kafka broker needs JDK 17+ and Maven)")
    return path


def _run(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        output = "\n".join((done.stdout + done.stderr).splitlines()[-40:])
        raise RecipeError(f"{Path(command[0]).name} failed ({done.returncode}):\n{output}")
