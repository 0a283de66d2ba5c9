"""Dashboards and alerts as files: they parse, and every metric they name is one Courier exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support.api import auth, dispatch
from tests.support.session import ROOT, join

MONITORING = ROOT / "monitoring"
#: Series Prometheus itself records for every scrape target.
PROMETHEUS_OWN = {"up"}
#: PromQL words that look like metric names.
PROMQL_WORDS = {
    "sum", "by", "without", "on", "ignoring", "group_left", "group_right", "rate", "irate", "increase", "unless",
    "and", "or", "histogram_quantile", "vector", "max", "min", "avg", "count", "bool", "offset", "le",
    "humanize", "humanizeDuration", "humanizePercentage",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers outside label matchers, groupings and ranges."""
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)  # grouping labels
    expr = re.sub(r"\"[^\"]*\"", "", expr)
    names = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr))
    return {n for n in names if n not in PROMQL_WORDS and not n.startswith("__")}


def exported(api: Any) -> set[str]:
    """Family and sample names GET /metrics serves (a counter family is queried as `<name>_total`)."""
    text = api.get("/metrics").text
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(s.name for s in family.samples)
        if family.type == "counter":
            names.add(family.name + "_total")
    return names


@pytest.fixture(scope="module")
def served(worker: Any) -> set[str]:
    """What /metrics exports once a worker has run a task that succeeded and one that failed."""
    from fastapi.testclient import TestClient

    from app.main import app
    from tests.support.api import make_key

    key = make_key("admin")
    with TestClient(app) as api:
        ids = [dispatch(api, key), dispatch(api, key, fail="permanent")]
        for task_id in ids:
            join(
                lambda t=task_id: (
                    api.get(f"/api/v1/tasks/task/{t}", headers=auth(key)).json()["state"]
                    in ("SUCCESS", "FAILURE", "DEAD_LETTERED")
                ),
                what="the probes to finish",
            )
        join(lambda: "celery_task_errors_total" in exported(api), what="the error counter to be exported")
        return exported(api)


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load((MONITORING / "prometheus" / "alerts.yml").read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_the_alert_rules_parse_and_cover_what_ops_staff_must_hear_about():
    rules = alert_rules()
    names = {r["alert"] for r in rules}
    assert {
        "CourierDeadLettersGrowing",
        "CourierBacklogTooOld",
        "CourierNoWorkersOnTier",
        "CourierTaskErrorRate",
        "CourierBrokerDown",
    } <= names
    for rule in rules:
        assert rule["expr"].strip() and rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]


def test_every_metric_an_alert_names_is_exported(served):
    for rule in alert_rules():
        missing = metric_names(rule["expr"]) - served - PROMETHEUS_OWN
        assert not missing, f"{rule['alert']} names metrics Courier does not export: {missing}"


def test_every_metric_the_dashboard_plots_is_exported(served):
    dashboard = json.loads((MONITORING / "grafana" / "dashboards" / "courier.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    assert len(exprs) >= 10
    for expr in exprs:
        missing = metric_names(expr.replace("$__rate_interval", "5m")) - served - PROMETHEUS_OWN
        assert not missing, f"the dashboard plots metrics Courier does not export: {missing} in {expr}"


def test_prometheus_loads_the_rules_and_scrapes_the_api_and_workers():
    config = yaml.safe_load((MONITORING / "prometheus" / "prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["courier-api"]["static_configs"][0]["targets"] == ["api:8000"]
    assert {n for sd in jobs["courier-workers"]["dns_sd_configs"] for n in sd["names"]} == {
        "worker-high",
        "worker-medium",
        "worker-low",
    }
    compose = yaml.safe_load((ROOT / "docker-compose.prod.yml").read_text())
    mounted = " ".join(compose["services"]["prometheus"]["volumes"])
    assert "monitoring/prometheus/alerts.yml" in mounted and "monitoring/prometheus/prometheus.yml" in mounted
    assert any("grafana/dashboards" in v for v in compose["services"]["grafana"]["volumes"])
    assert Path(MONITORING / "grafana" / "provisioning" / "datasources" / "prometheus.yml").exists()
