"""``headwater run`` as a deployment runs it: one config file, separate processes for the
bridges (a drop folder), the router, the control processor and the workers of two routes,
against the real Kafka. Files dropped go through every process; each task runs on a
worker of its own route; a config file with errors is refused with exact lines."""

from __future__ import annotations

import asyncio
import collections
import subprocess
from pathlib import Path

import orjson
import pytest

from headwater.runner.envelope import CloudEvent, to_kafka
from headwater.runner.log import kafka
from headwater.runner.settings import Settings
from tests.kafkatools import read_all, read_topic, wait_for_members
from tests.processes import HEADWATER, HeadwaterProcess, cli

pytestmark = pytest.mark.integration

PIPELINE = """\
name: ingest
triggers:
  - type: headwater.file.created
  - type: aws.s3.object.created
tasks:
  parse: {python: "role_tasks:where", route: alpha}
  load: {python: "role_tasks:where", route: beta, needs: [parse]}
"""
TASKS = """\
import os

def where(ctx):
    return {"instance": os.environ["HEADWATER_INSTANCE"]}
"""
FILES = 12


def config(settings: Settings, tmp_path: Path) -> Path:
    path = tmp_path / "headwater.yaml"
    path.write_text(
        f"""\
kafka:
  bootstrap: {settings.kafka.bootstrap}
  topic_prefix: {settings.topics.prefix}
pipelines: pipelines
state_dir: state
sources:
  - name: drops
    kind: filedrop
    options: {{directory: {tmp_path / "drop"}, settle: 0.2}}
routes:
  - {{name: alpha, region: eu-west-1, cloud: aws}}
  - {{name: beta, region: europe-west1, cloud: gcp}}
egress:
  prices: {{aws: 0.09}}
"""
    )
    return path


async def test_separate_roles_run_a_pipeline_end_to_end(settings: Settings, tmp_path: Path) -> None:
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "drop").mkdir()
    (tmp_path / "pipelines" / "ingest.yaml").write_text(PIPELINE)
    (tmp_path / "pipelines" / "role_tasks.py").write_text(TASKS)
    path = str(config(settings, tmp_path))
    roles = {
        "bridges": ["--role", "bridges"],
        "router": ["--role", "router"],
        "control": ["--role", "control"],
        "alpha": ["--role", "worker", "--routes", "alpha"],
        "beta": ["--role", "worker", "--routes", "beta"],
    }
    processes = {
        name: HeadwaterProcess(
            ["run", "--config", path, *args],
            settings,
            tmp_path / f"{name}.log",
            env={"HEADWATER_INSTANCE": name},
        ).start()
        for name, args in roles.items()
    }
    try:
        for process in processes.values():
            await process.output_shows("headwater run: roles")
        await wait_for_members(settings, ("router", "control", "workers.alpha", "workers.beta"), 1)
        for n in range(FILES):
            (tmp_path / "drop" / f"f{n}.csv").write_text(f"a,b\n{n},{n}\n")
        # and an object in S3's eu-west-1, as the SQS bridge makes it: read by alpha (in
        # its region: no egress) and by beta (in GCP: its bytes leave AWS)
        s3 = CloudEvent(
            "s3-1",
            "arn:aws:s3:::lake",
            "aws.s3.object.created",
            {"bucket": "lake", "key": "big.csv", "size": 3_000_000_000, "region": "eu-west-1"},
            subject="s3://lake/big.csv",
        )
        producer = kafka.producer(settings)
        async with kafka.started(producer):
            headers, value = to_kafka(s3)
            await producer.send_and_wait(settings.topics.events, value, headers=headers)
        await read_topic(settings, settings.topics.completions, lambda r: len(r) >= FILES + 1)
        status = await asyncio.to_thread(cli, settings, "status")
        assert status.returncode == 0, status.stderr
        assert "  alpha (eu-west-1): 1 worker(s), last heartbeat" in status.stdout, status.stdout
        assert "  beta (europe-west1): 1 worker(s)" in status.stdout, status.stdout
    finally:
        codes = {name: process.stop() for name, process in processes.items()}
    assert codes == dict.fromkeys(roles, 0), codes  # SIGTERM drains and exits cleanly
    done = [orjson.loads(r.value) for r in await read_all(settings, settings.topics.completions)]
    assert len(done) == FILES + 1 and {d["status"] for d in done} == {"succeeded"}
    [moved] = [d for d in done if d["trigger"]["id"] == "s3-1"]
    assert moved["tasks"]["load"]["ran_on"]["cloud"] == "gcp"
    assert moved["egress"]["from"] == {"cloud": "aws", "region": "eu-west-1"}
    assert moved["egress"]["bytes"] == 3_000_000_000
    assert moved["egress"]["cost_usd"] == pytest.approx(0.27)
    assert [(m["task"], m["to"]["route"]) for m in moved["egress"]["moves"]] == [("load", "beta")]
    done = [d for d in done if d["trigger"]["id"] != "s3-1"]
    assert all(d["egress"]["bytes"] == 0 for d in done)  # local files move nothing
    per_file = collections.Counter(d["trigger"]["subject"] for d in done)
    assert set(per_file.values()) == {1}
    for d in done:
        assert d["tasks"]["parse"]["output"]["instance"] == "alpha"
        assert d["tasks"]["load"]["output"]["instance"] == "beta"
    # each process ran its role only
    assert "worker[" not in processes["router"].output()
    for name in ("bridges", "router", "control", "alpha", "beta"):
        assert "Traceback" not in processes[name].output(), processes[name].output()


def test_a_config_file_with_errors_is_refused_with_exact_lines(tmp_path: Path) -> None:
    path = tmp_path / "headwater.yaml"
    path.write_text(
        "kafka:\n"
        "  partitions: many\n"
        "  sasl: {mechanism: PLAIN, username: u, password: hunter2}\n"
        "routes:\n"
        "  - name: eu-1\n"
        "    fallback: [eu-9]\n"
        "limits: {task_timeout: soon}\n"
        "colour: blue\n"
    )
    for command in (["validate", "--config", str(path)], ["run", "--config", str(path)]):
        done = subprocess.run(
            [HEADWATER, *command], capture_output=True, text=True, timeout=60, cwd=tmp_path
        )
        assert done.returncode == 1, done
        said = (done.stdout + done.stderr).splitlines()
        assert said == [
            f'{path}:2: kafka.partitions: must be a partition count from 1 to 10000 (got "many")',
            f"{path}:3: kafka.sasl.password: a secret must be a reference such as ${{env:NAME}} "
            "or ${file:/path}, not a literal",
            f"{path}:3: kafka.sasl.password: must be a secret reference such as ${{env:NAME}}, "
            '${file:/path} or ${aws-sm:name#key} (got "hunter2")',
            f'{path}:6: routes[0].fallback[0]: unknown route "eu-9" (declare it under routes)',
            f"{path}:7: limits.task_timeout: 'soon' is not a duration like 30s, 5m, 250ms",
            f"{path}:8: colour: unknown field",
        ], said
