"""Egress: which bytes of a trigger's object a run's tasks moved out of its cloud or
region, their estimated cost from the price table, in the completion and in the
metrics; the price table and a route's cloud from the config file."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from headwater.runner.errors import ConfigError, PipelineErrors
from headwater.runner.model.config import load_config
from headwater.runner.observe.metrics import MetricsObserver
from headwater.runner.runs.completion import completion_event
from headwater.runner.runs.egress import egress, origin_of
from headwater.runner.runs.machine import Run, TaskRecord
from headwater.runner.runs.windows import BATCH_TYPE
from headwater.runner.settings import Settings

GB = 1_000_000_000
S3 = {
    "id": "e1",
    "source": "arn:aws:s3:::in",
    "type": "aws.s3.object.created",
    "subject": "s3://in/big.parquet",
    "data": {"bucket": "in", "key": "big.parquet", "size": 2 * GB, "region": "eu-west-1"},
}
PRICES = {"aws": 0.09, "gcp": 0.12}


def place(cloud: str | None, region: str | None, route: str = "r") -> dict[str, object]:
    ran_on: dict[str, object] = {"route": route, "region": region, "instance": "w"}
    if cloud is not None:
        ran_on["cloud"] = cloud
    return ran_on


def test_same_region_moves_nothing_other_regions_and_clouds_do() -> None:
    tasks = {
        "near": {"attempts": 1, "ran_on": place("aws", "eu-west-1", "eu")},
        "far": {"attempts": 2, "ran_on": place("aws", "us-east-1", "us")},
        "gcp": {"attempts": 1, "ran_on": place("gcp", "europe-west1", "g")},
        "onprem": {"attempts": 1, "ran_on": place(None, "dc-1", "dc")},
        "lost": {"attempts": 1, "ran_on": None},  # no worker said where: not counted
        "skipped": {"attempts": 0, "ran_on": None},
    }
    moved = egress(S3, tasks, PRICES)
    assert moved is not None
    assert moved["from"] == {"cloud": "aws", "region": "eu-west-1"}
    assert [(m["task"], m["bytes"], m["to"]["cloud"]) for m in moved["moves"]] == [
        ("far", 4 * GB, "aws"),
        ("gcp", 2 * GB, "gcp"),
        ("onprem", 2 * GB, "outside"),
    ]
    assert moved["bytes"] == 8 * GB and moved["cost_usd"] == pytest.approx(8 * 0.09)
    assert moved["moves"][0]["cost_usd"] == pytest.approx(4 * 0.09)
    unpriced = egress(S3, tasks, {})
    assert unpriced is not None and unpriced["cost_usd"] is None and unpriced["bytes"] == 8 * GB


@pytest.mark.parametrize(
    ("event", "cloud", "size"),
    [
        ({"subject": "gs://b/o", "data": {"size": "1234"}}, "gcp", 1234),
        (
            {"subject": "https://acct.blob.core.windows.net/c/o", "data": {"size": 9}},
            "azure",
            9,
        ),
        ({"subject": "file:///drop/x.csv", "data": {"size": 5}}, "local", 5),
        ({"hwbridge": "sqs", "data": {"size": 7}}, "aws", 7),
    ],
)
def test_the_cloud_comes_from_the_subject_or_the_bridge(
    event: dict[str, object], cloud: str, size: int
) -> None:
    origin = origin_of(event)
    assert origin is not None and (origin.cloud, origin.size) == (cloud, size)


@pytest.mark.parametrize(
    "data",
    [None, {}, {"size": -1}, {"size": True}, {"size": "12a"}, {"size": 1.5}, "text"],
)
def test_an_event_about_no_object_or_a_bad_size_has_no_egress(data: object) -> None:
    assert egress({"subject": "s3://b/k", "data": data}, {}, PRICES) is None
    assert egress({"type": "x", "data": {"size": 5}}, {}, PRICES) is None  # no cloud named


def test_a_local_file_moves_nothing_and_a_batch_counts_all_its_objects() -> None:
    ran = {"t": {"attempts": 1, "ran_on": place(None, None)}}
    local = egress({"subject": "file:///drop/x", "data": {"size": 5}}, ran, PRICES)
    assert local is not None and local["bytes"] == 0 and local["moves"] == []
    batch = {"type": BATCH_TYPE, "data": {"events": [S3, S3, {"type": "x"}]}}
    moved = egress(batch, ran, PRICES)
    assert moved is not None and moved["bytes"] == 4 * GB


def test_the_completion_says_it_and_the_metrics_count_it() -> None:
    run = Run("r1", "etl", S3, 1.0, "succeeded", 2.0)
    run.tasks = {"load": TaskRecord("succeeded", 1, ran_on=place("gcp", "us-central1", "g"))}
    data = completion_event(run, PRICES).data
    assert data["egress"]["bytes"] == 2 * GB
    assert data["egress"]["cost_usd"] == pytest.approx(0.18)
    plain = Run("r2", "etl", {"id": "x", "type": "t"}, 1.0, "succeeded", 2.0)
    assert "egress" not in completion_event(plain, PRICES).data
    labels = {"pipeline": "etl", "source_cloud": "aws", "route": "g", "region": "us-central1"}
    before = REGISTRY.get_sample_value("headwater_egress_bytes_total", labels) or 0.0
    MetricsObserver(PRICES).run_finished(run)
    assert REGISTRY.get_sample_value("headwater_egress_bytes_total", labels) == before + 2 * GB
    cost = REGISTRY.get_sample_value("headwater_egress_cost_usd_total", labels)
    assert cost is not None and cost >= 0.18


def test_prices_and_route_clouds_come_from_the_config(tmp_path: Path) -> None:
    path = tmp_path / "headwater.yaml"
    path.write_text(
        "egress: {prices: {aws: 0.09, gcp: 0.12}}\n"
        "routes: [{name: a, region: us-east-1, cloud: aws}]\n"
    )
    config = load_config(path)
    assert Settings.from_env(config.env).egress_prices == {"aws": 0.09, "gcp": 0.12}
    assert config.route("a").cloud == "aws"
    path.write_text("egress: {prices: {AWS: -1}}\n")
    with pytest.raises(PipelineErrors) as refused:
        load_config(path)
    assert refused.value.problems == [
        f"{path}:1: egress.prices.AWS: must be US dollars per GB from 0 to 100 (got -1)",
        f"{path}:1: egress.prices.AWS: must be a cloud name such as aws, gcp or azure "
        '(lowercase) (got "AWS")',
    ]
    for bad in ("aws", "aws=x", "aws=-1", "=0.1", "aws=1000"):
        with pytest.raises(ConfigError, match="HEADWATER_EGRESS_PRICES"):
            Settings.from_env({"HEADWATER_EGRESS_PRICES": bad})
