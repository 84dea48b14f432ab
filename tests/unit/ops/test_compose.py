"""Deployment and monitoring files: compose, Prometheus, alerts and the Grafana dashboard.

Docker is not needed: these tests parse the files and check them against the repository
and against the metrics that ``pipeline/observability/prometheus.py`` really exports.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from pipeline.config.settings import Settings
from pipeline.observability.prometheus import PrometheusObserver

ROOT = Path(__file__).resolve().parents[3]
COMPOSE = ROOT / "docker-compose.yml"
PROMETHEUS = ROOT / "ops" / "prometheus" / "prometheus.yml"
ALERTS = ROOT / "ops" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "ops" / "grafana" / "dashboards" / "embedstream.json"
DATASOURCES = ROOT / "ops" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"

METRIC = re.compile(r"\bembedstream_[a-z_]+")
# How prometheus_client's text exposition names the samples of each metric type.
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
}


def _load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The parsed docker-compose.yml."""
    data = _load_yaml(COMPOSE)
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def defined_metrics() -> set[str]:
    """Every sample name the pipeline's Prometheus observer can expose."""
    registry = CollectorRegistry()
    PrometheusObserver(registry, "docs")
    names: set[str] = set()
    for family in registry.collect():
        names.update(sample.name for sample in family.samples)
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
    return names


def _alert_rules() -> Iterator[dict[str, Any]]:
    for group in _load_yaml(ALERTS)["groups"]:
        yield from group["rules"]


def _dashboard_exprs(panels: list[dict[str, Any]]) -> Iterator[str]:
    for panel in panels:
        for target in panel.get("targets", []):
            if "expr" in target:
                yield target["expr"]
        yield from _dashboard_exprs(panel.get("panels", []))


def _bind_sources(service: dict[str, Any]) -> Iterator[str]:
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            if volume.get("type") == "bind":
                yield volume["source"]
        else:
            source = str(volume).split(":", 1)[0]
            if source.startswith((".", "/", "~")):
                yield source


def test_compose_parses(compose: dict[str, Any]) -> None:
    """docker-compose.yml is valid YAML with a services mapping."""
    assert isinstance(compose.get("services"), dict)
    assert compose["services"]


def test_compose_has_the_production_services(compose: dict[str, Any]) -> None:
    """Kafka, Qdrant, the three daemons, Prometheus and Grafana are all defined."""
    services = compose["services"]
    for name in ("kafka", "qdrant", "source", "embed", "sink", "prometheus", "grafana"):
        assert name in services, name
    assert services["kafka"]["image"].split(":")[0] == "apache/kafka"
    assert services["qdrant"]["image"].split(":")[0] == "qdrant/qdrant"


def test_compose_host_paths_exist(compose: dict[str, Any]) -> None:
    """Every relative bind-mount source and every build context/Dockerfile exists in the repo."""
    checked = 0
    for name, service in compose["services"].items():
        for source in _bind_sources(service):
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
                checked += 1
        build = service.get("build")
        if build is not None:
            context = build if isinstance(build, str) else build.get("context", ".")
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            assert (ROOT / context).is_dir(), f"{name} builds from missing {context}"
            assert (ROOT / context / dockerfile).is_file(), f"{name} needs missing {dockerfile}"
            checked += 1
    assert checked


def test_prometheus_config_references_existing_rules() -> None:
    """prometheus.yml parses, scrapes the daemons and loads an alerts file that exists."""
    config = _load_yaml(PROMETHEUS)
    rule_files = config["rule_files"]
    assert rule_files
    for rule_file in rule_files:
        assert (PROMETHEUS.parent / rule_file).is_file(), rule_file
    assert "alerts.yml" in rule_files
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert {"source", "embed", "sink"} <= jobs


def test_alert_rules_are_complete() -> None:
    """Every alert rule has a name, an expression and a summary saying what is wrong."""
    rules = list(_alert_rules())
    assert rules
    for rule in rules:
        assert rule.get("alert"), rule
        assert rule.get("expr"), rule
        assert rule.get("annotations", {}).get("summary"), rule


def test_dashboard_parses_and_uses_the_provisioned_datasource() -> None:
    """The dashboard JSON parses, has panels, and queries the provisioned Prometheus uid."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard["uid"] == "embedstream"
    assert dashboard["panels"]
    uids = {ds["uid"] for ds in _load_yaml(DATASOURCES)["datasources"]}
    for panel in dashboard["panels"]:
        if panel.get("type") != "row":
            assert panel["datasource"]["uid"] in uids, panel["title"]
            assert panel["targets"], panel["title"]


def test_queried_metrics_are_exported(defined_metrics: set[str]) -> None:
    """Every embedstream_* metric named in a panel or alert expression is exported by
    pipeline/observability/prometheus.py."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs = [*_dashboard_exprs(dashboard["panels"]), *(rule["expr"] for rule in _alert_rules())]
    used = {name for expr in exprs for name in METRIC.findall(expr)}
    assert used
    unknown = used - defined_metrics
    assert not unknown, f"not exported by pipeline/observability/prometheus.py: {sorted(unknown)}"


ENV_NAME = re.compile(r"\bEMBEDSTREAM_[A-Z0-9_]+")


def _is_setting(env_name: str) -> bool:
    model: Any = Settings
    for part in env_name.removeprefix("EMBEDSTREAM_").lower().split("__"):
        field = model.model_fields.get(part) if model is not None else None
        if field is None:
            return False
        annotation = field.annotation
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return True


def test_compose_names_only_real_settings_even_in_comments() -> None:
    """Every EMBEDSTREAM_* variable in docker-compose.yml (commented examples too) is a real setting."""
    names = set(ENV_NAME.findall(COMPOSE.read_text(encoding="utf-8")))
    assert {"EMBEDSTREAM_KAFKA__SECURITY_PROTOCOL", "EMBEDSTREAM_KAFKA__SASL_PASSWORD"} <= names
    unknown = sorted(name for name in names if not _is_setting(name))
    assert not unknown, f"docker-compose.yml names settings that do not exist: {unknown}"


def test_compose_holds_no_secret_value() -> None:
    """Passwords and keys in docker-compose.yml come from the environment, never literal values."""
    secret = re.compile(r"(PASSWORD|(?<!INSECURE)_API_KEY):\s*(?P<value>\S+)")
    for line in COMPOSE.read_text(encoding="utf-8").splitlines():
        found = secret.search(line)
        if found and not found.group("value").startswith(("${", "/")):
            pytest.fail(f"literal secret in docker-compose.yml: {line.strip()}")
