"""The Grafana dashboard and Prometheus config in compose/ name only series headwater
exports, and every panel has a query."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import REGISTRY

import headwater.runner.metrics  # noqa: F401 - registers the series

COMPOSE = Path(__file__).resolve().parents[2] / "compose"


def exported() -> set[str]:
    names = set()
    for family in REGISTRY.collect():
        if family.name.startswith("headwater_"):
            names |= {sample.name for sample in family.samples} | {family.name}
            names |= {f"{family.name}_{suffix}" for suffix in ("bucket", "count", "sum", "total")}
    return names


def test_every_dashboard_query_names_exported_series() -> None:
    dashboard = json.loads((COMPOSE / "grafana" / "dashboards" / "headwater.json").read_text())
    known = exported()
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            for name in re.findall(r"headwater_[a-z_]+", target["expr"]):
                assert name in known, (panel["title"], name)


def test_prometheus_scrapes_every_headwater_container() -> None:
    compose = (COMPOSE / "docker-compose.roles.yml").read_text()
    scraped = set(re.findall(r"- ([a-z0-9-]+):9464", (COMPOSE / "prometheus.yml").read_text()))
    services = set(re.findall(r"\n  ([a-z0-9-]+):\n    <<: \*headwater", compose))
    assert services and services == scraped
