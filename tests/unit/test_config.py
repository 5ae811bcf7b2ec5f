"""The config file: what a valid one becomes, and exact lines for what a schema cannot
say (fallbacks, residency)."""

from __future__ import annotations

from pathlib import Path

import pytest

from headwater.bridges import sources
from headwater.runner.errors import ConfigError, PipelineErrors
from headwater.runner.flow.routes import RouteInfo, RouteMap
from headwater.runner.model.config import load_config, residency_problems
from headwater.runner.model.pipeline import Pipeline, Task, Trigger
from headwater.runner.settings import Settings


def test_a_valid_config_becomes_settings_under_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "headwater.yaml"
    path.write_text(
        "kafka: {bootstrap: 'k1:9092,k2:9092', topic_prefix: prod., partitions: 12,"
        " request_timeout: 20s, sasl: {mechanism: SCRAM-SHA-512, username: hw,"
        " password: '${env:KAFKA_PASSWORD}'}}\n"
        "pipelines: [flows, more/one.yaml]\n"
        "sources: [{name: uploads, kind: filedrop, options: {directory: /drop}}]\n"
        "routes: [{name: eu-1, region: eu-west-1, residency: eu, fallback: [eu-2]},"
        " {name: eu-2, residency: eu}]\n"
        "limits: {worker_concurrency: 8, task_timeout: 10m}\n"
        "failover: {after: 20s}\n"
    )
    config = load_config(path, sources.problems)
    assert config.pipelines == (tmp_path / "flows", tmp_path / "more" / "one.yaml")
    assert config.route("eu-1").fallback == ("eu-2",) and config.failover_after == 20.0
    settings = Settings.from_env({**config.env, "HEADWATER_WORKER_CONCURRENCY": "4"})
    assert settings.kafka.bootstrap == "k1:9092,k2:9092"
    assert settings.kafka.partitions == 12 and settings.kafka.request_timeout_ms == 20_000
    assert settings.kafka.password == "${env:KAFKA_PASSWORD}"  # a reference, resolved late
    assert settings.topics.prefix == "prod." and settings.task_timeout == 600.0
    assert settings.worker_concurrency == 4  # the environment wins


def test_a_fallback_keeps_the_residency(tmp_path: Path) -> None:
    path = tmp_path / "headwater.yaml"
    path.write_text(
        "routes:\n"
        "  - {name: eu-1, residency: eu, fallback: [us-1]}\n"
        "  - {name: us-1, residency: us}\n"
    )
    with pytest.raises(PipelineErrors) as caught:
        load_config(path)
    assert caught.value.problems == [
        f'{path}:2: routes[0].fallback[0]: route "us-1" has residency us, this route eu: '
        "a fallback keeps the residency"
    ]


def test_a_task_with_a_residency_must_be_on_a_route_of_it() -> None:
    task = Task("scrub", "python", "m:f", route="us-1", residency="eu")
    pipeline = Pipeline("gdpr", (Trigger("t"),), (task,), file="gdpr.yaml")
    routes = {"us-1": RouteInfo("us-1", residency="us")}
    assert residency_problems([pipeline], routes) == [
        "gdpr.yaml: tasks.scrub.residency: eu, but its route 'us-1' has residency us"
    ]
    assert "not declared" in residency_problems([pipeline], {})[0]


def test_the_first_alive_fallback_serves_a_down_route() -> None:
    routes = [RouteInfo("a", fallback=("b", "c")), RouteInfo("b"), RouteInfo("c")]
    live = RouteMap.of(routes, 10.0, 0.0)
    assert live.served_by({"b"}, 5.0) == set()  # nothing heard yet, but not for long
    live.seen("b", "b1", 9.0)
    live.seen("c", "c1", 9.0)
    assert live.server("a", 11.0) == "b" and live.served_by({"b"}, 11.0) == {"a"}
    assert live.served_by({"c"}, 11.0) == set()  # only the first alive fallback
    live.seen("c", "c1", 25.0)
    assert live.server("a", 25.0) == "c"  # b went silent: c takes over
    live.seen("a", "a1", 26.0)
    assert live.server("a", 26.0) == "a" and live.down(26.0) == {"b": None}


def test_a_garbled_heartbeat_is_no_heartbeat() -> None:
    from headwater.runner.routing import Routing

    routing = Routing(
        Settings(),
        {},
        {"a": RouteInfo("a")},
        {},
        failover_after=10.0,
        heartbeat=2.0,
        clock=lambda: 100.0,
    )
    for garbage in (
        b"",
        b"{not json",
        b"[]",
        b'{"route": "a"}',
        b'{"route": "a", "at": "x"}',
        None,
    ):
        routing._heard(garbage)
    assert routing._map.last_heard("a") is None
    routing._heard(b'{"route": "a", "instance": "w1", "at": 99.0}')
    assert routing._map.last_heard("a") == 99.0


def test_booleans_and_paths_of_the_config_reach_the_settings(tmp_path: Path) -> None:
    path = tmp_path / "headwater.yaml"
    path.write_text(
        "lineage: true\nstandby: false\nstate_dir: state\nkafka: {tls: {ca_file: ca.pem}}\n"
    )
    config = load_config(path)
    assert config.env["HEADWATER_LINEAGE"] == "1" and config.env["HEADWATER_STANDBY"] == "0"
    assert config.env["HEADWATER_STATE_DIR"] == str(tmp_path / "state")
    assert config.env["HEADWATER_KAFKA_TLS_CA_FILE"] == str(tmp_path / "ca.pem")
    assert Settings.from_env(config.env).lineage is True


def test_a_lineage_backend_url_turns_lineage_on_and_its_key_must_be_a_reference(
    tmp_path: Path,
) -> None:
    path = tmp_path / "headwater.yaml"
    path.write_text("lineage: {url: 'http://marquez:5000', api_key: '${env:MARQUEZ_KEY}'}\n")
    settings = Settings.from_env(load_config(path).env)
    assert settings.lineage is True and settings.lineage_url == "http://marquez:5000"
    assert settings.lineage_api_key == "${env:MARQUEZ_KEY}"
    path.write_text("lineage: {url: 'http://marquez:5000', api_key: abc123}\n")
    with pytest.raises(PipelineErrors, match="api_key"):
        load_config(path)
    for bad, said in (
        ("ftp://x", "not an http"),
        ("http://user:pw@marquez:5000", "credentials"),
        ("marquez", "not an http"),
    ):
        with pytest.raises(ConfigError, match=said):
            Settings.from_env({"HEADWATER_LINEAGE_URL": bad})
    with pytest.raises(ConfigError, match="API key is a secret"):
        Settings.from_env({"HEADWATER_LINEAGE_API_KEY": "s3cr3t-key"})
    referenced = Settings.from_env({"HEADWATER_LINEAGE_URL": "${env:MARQUEZ_URL}"})
    assert referenced.lineage_url == "${env:MARQUEZ_URL}" and referenced.lineage
