"""``make demo``: one real pipeline run, end to end, on this machine.

Starts Kafka and moto when they are not running (and stops again only what it started),
creates a bucket whose ObjectCreated notifications go to an SQS queue, runs
``headwater dev examples/ --sqs QUEUE``, uploads ``examples/data/sales.csv``, shows the
run's progress and the completion event a downstream service receives, and the result
object the pipeline wrote. Exits non-zero if the run does not complete in time.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import boto3
import orjson
from aiokafka import AIOKafkaConsumer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.aws import bucket_notifying_queue  # noqa: E402
from tests.servers.services import BackgroundServer, KafkaServer, MotoServer  # noqa: E402

BUCKET, QUEUE, REGION = "headwater-demo", "headwater-demo-incoming", "us-east-1"
TIMEOUT = 120.0


def say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def main() -> int:
    started: list[BackgroundServer] = []
    try:
        for server in (KafkaServer(), MotoServer()):
            if server.status() not in ("up", "external"):
                say(f"starting {type(server).__name__} (stopped again at the end)")
                server.start()
                started.append(server)
        return run_demo(KafkaServer().bootstrap, MotoServer().endpoint_url)
    finally:
        for server in reversed(started):
            server.stop()


def run_demo(bootstrap: str, endpoint: str) -> int:
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "demo",
        "AWS_SECRET_ACCESS_KEY": "demo",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ENDPOINT_URL": endpoint,
        "HEADWATER_KAFKA": bootstrap,
        "PYTHONUNBUFFERED": "1",
    }
    os.environ.update(env)
    s3, sqs = boto3.client("s3"), boto3.client("sqs")
    say(f"bucket s3://{BUCKET} notifies queue {QUEUE} on ObjectCreated (moto at {endpoint})")
    queue_url = bucket_notifying_queue(s3, sqs, BUCKET, QUEUE)

    headwater = str(Path(sys.executable).with_name("headwater"))
    say(f"headwater dev examples/ --sqs {queue_url}")
    dev = subprocess.Popen(
        [headwater, "dev", str(ROOT / "examples"), "--sqs", queue_url],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    threading.Thread(target=_echo, args=(dev,), daemon=True).start()
    try:
        key = f"incoming/sales-{time.strftime('%Y%m%d-%H%M%S')}.csv"
        say(f"uploading examples/data/sales.csv to s3://{BUCKET}/{key}")
        s3.put_object(Bucket=BUCKET, Key=key, Body=(ROOT / "examples/data/sales.csv").read_bytes())
        record = asyncio.run(_completion(bootstrap, f"s3://{BUCKET}/{key}"))
        if record is None:
            say(f"no completion within {TIMEOUT:.0f}s")
            return 1
        headers = {k: v.decode() for k, v in record.headers}
        say(f"completion event on hw.completions (key {record.key.decode()}):")
        print("  headers:", orjson.dumps(headers, option=orjson.OPT_INDENT_2).decode())
        print(
            "  data:", orjson.dumps(orjson.loads(record.value), option=orjson.OPT_INDENT_2).decode()
        )
        data = orjson.loads(record.value)
        if data["status"] != "succeeded":
            return 1
        result = data["tasks"]["write"]["output"]
        body = s3.get_object(Bucket=result["bucket"], Key=result["key"])["Body"].read()
        say(f"result object s3://{result['bucket']}/{result['key']}: {body.decode().strip()}")
        return 0
    finally:
        dev.send_signal(signal.SIGTERM)
        dev.wait(30)


def _echo(process: subprocess.Popen[str]) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        print(f"  | {line}", end="", flush=True)


async def _completion(bootstrap: str, subject: str) -> Any:
    """The completion event triggered by ``subject``, read like a downstream service."""
    consumer = AIOKafkaConsumer(
        "hw.completions",
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    await consumer.start()
    deadline = time.monotonic() + TIMEOUT
    try:
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for record in records:
                    if orjson.loads(record.value)["trigger"]["subject"] == subject:
                        return record
        return None
    finally:
        await consumer.stop()


if __name__ == "__main__":
    sys.exit(main())
