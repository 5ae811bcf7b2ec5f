"""``make demo``: real pipeline runs, end to end, on this machine.

1. **Drop folder, no cloud at all**: Kafka alone; ``headwater dev examples/ --drop DIR``;
   ``examples/data/sales.csv`` is copied into the folder and the ``dropped-csv`` pipeline
   totals it.
2. **S3 -> SQS**: moto (S3 + SQS) joins; a bucket notifies a queue on ObjectCreated;
   ``headwater dev examples/ --sqs QUEUE``; the CSV is uploaded and ``csv-report`` reads it
   through the S3 API and writes the result back.

Each phase shows the run's progress, the completion event a downstream service receives
and the result. Servers the demo started are stopped again at the end. Exits non-zero if a
run does not succeed in time.
"""

from __future__ import annotations

import asyncio
import os
import shutil
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
SAMPLE = ROOT / "examples" / "data" / "sales.csv"
HEADWATER = str(Path(sys.executable).with_name("headwater"))
TIMEOUT = 120.0


def say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def main() -> int:
    started: list[BackgroundServer] = []
    try:
        kafka = _ensure(KafkaServer(), started)
        env = {**os.environ, "HEADWATER_KAFKA": kafka.bootstrap, "PYTHONUNBUFFERED": "1"}
        if drop_folder_phase(env) != 0:
            return 1
        moto = _ensure(MotoServer(), started)
        return s3_phase(env, moto.endpoint_url)
    finally:
        for server in reversed(started):
            server.stop()


def _ensure(server: Any, started: list[BackgroundServer]) -> Any:
    if server.status() not in ("up", "external"):
        say(f"starting {type(server).__name__} (stopped again at the end)")
        server.start()
        started.append(server)
    return server


def drop_folder_phase(env: dict[str, str]) -> int:
    folder = ROOT / ".hw" / "demo" / "drop"
    folder.mkdir(parents=True, exist_ok=True)
    say(f"phase 1, no cloud: headwater dev examples/ --drop {folder.relative_to(ROOT)}")
    with _headwater(["--drop", str(folder)], env):
        name = f"sales-{time.strftime('%Y%m%d-%H%M%S')}.csv"
        say(f"copying examples/data/sales.csv into the drop folder as {name}")
        shutil.copy(SAMPLE, folder / f".{name}.part")
        os.replace(folder / f".{name}.part", folder / name)
        data = _show_completion(env, (folder / name).as_uri())
        if data is None:
            return 1
        result = Path(data["tasks"]["write"]["output"]["path"])
        say(f"result file {result.relative_to(ROOT)}: {result.read_text().strip()}")
    return 0


def s3_phase(env: dict[str, str], endpoint: str) -> int:
    env = {
        **env,
        "AWS_ACCESS_KEY_ID": "demo",
        "AWS_SECRET_ACCESS_KEY": "demo",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ENDPOINT_URL": endpoint,
    }
    session = boto3.Session(
        aws_access_key_id="demo", aws_secret_access_key="demo", region_name=REGION
    )
    s3 = session.client("s3", endpoint_url=endpoint)
    sqs = session.client("sqs", endpoint_url=endpoint)
    say(
        f"phase 2, S3: bucket s3://{BUCKET} notifies queue {QUEUE} on ObjectCreated "
        f"(moto at {endpoint})"
    )
    queue_url = bucket_notifying_queue(s3, sqs, BUCKET, QUEUE)
    say(f"headwater dev examples/ --sqs {queue_url}")
    with _headwater(["--sqs", queue_url], env):
        key = f"incoming/sales-{time.strftime('%Y%m%d-%H%M%S')}.csv"
        say(f"uploading examples/data/sales.csv to s3://{BUCKET}/{key}")
        s3.put_object(Bucket=BUCKET, Key=key, Body=SAMPLE.read_bytes())
        data = _show_completion(env, f"s3://{BUCKET}/{key}")
        if data is None:
            return 1
        result = data["tasks"]["write"]["output"]
        body = s3.get_object(Bucket=result["bucket"], Key=result["key"])["Body"].read()
        say(f"result object s3://{result['bucket']}/{result['key']}: {body.decode().strip()}")
    return 0


class _headwater:
    """``headwater dev examples/ ARGS`` in the background, its output shown indented."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [HEADWATER, "dev", str(ROOT / "examples"), *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._echo, daemon=True).start()

    def _echo(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            print(f"  | {line}", end="", flush=True)

    def __enter__(self) -> _headwater:
        return self

    def __exit__(self, *_: object) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(30)


def _show_completion(env: dict[str, str], subject: str) -> dict[str, Any] | None:
    """Wait for the completion of the run triggered by ``subject``; print it."""
    record = asyncio.run(_completion(env["HEADWATER_KAFKA"], subject))
    if record is None:
        say(f"no completion within {TIMEOUT:.0f}s")
        return None
    headers = {k: v.decode() for k, v in record.headers}
    data: dict[str, Any] = orjson.loads(record.value)
    say(f"completion event on hw.completions (key {record.key.decode()}):")
    print("  headers:", orjson.dumps(headers, option=orjson.OPT_INDENT_2).decode())
    print("  data:", orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
    return data if data["status"] == "succeeded" else None


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
