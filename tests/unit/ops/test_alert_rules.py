"""`promtool test rules` over ops/prometheus/alerts.test.yml: every alert rule in alerts.yml
is unit-tested with input series, firing and not firing.

promtool ships with Debian's ``prometheus`` package (``.ci/run`` installs it); where it is
not on PATH the promtool tests skip, saying so. The coverage check needs only the files.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
RULES_DIR = ROOT / "ops" / "prometheus"
ALERTS = RULES_DIR / "alerts.yml"
ALERT_TESTS = RULES_DIR / "alerts.test.yml"


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool is not on PATH: install Debian's prometheus package (.ci/run does)")
    return found


def _alert_names() -> list[str]:
    data = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule["alert"] for group in data["groups"] for rule in group["rules"] if "alert" in rule]


def _cases() -> list[dict[str, Any]]:
    data = yaml.safe_load(ALERT_TESTS.read_text(encoding="utf-8"))
    assert data["rule_files"] == ["alerts.yml"]
    return [case for test in data["tests"] for case in test.get("alert_rule_test", [])]


def test_every_alert_rule_has_a_firing_and_a_quiet_case() -> None:
    """alerts.test.yml expects each rule of alerts.yml to fire somewhere and to stay quiet
    somewhere, and names no rule that does not exist."""
    names = _alert_names()
    assert names
    cases = _cases()
    firing = {case["alertname"] for case in cases if case.get("exp_alerts")}
    quiet = {case["alertname"] for case in cases if not case.get("exp_alerts")}
    assert set(names) - firing == set(), "rules never expected to fire"
    assert set(names) - quiet == set(), "rules never expected to stay quiet"
    assert (firing | quiet) - set(names) == set(), "cases for rules alerts.yml does not have"


def test_alert_rules_pass_promtool_check() -> None:
    """alerts.yml is valid to Prometheus itself (syntax, PromQL, templates)."""
    done = subprocess.run(
        [_promtool(), "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_test_rules_passes() -> None:
    """`promtool test rules alerts.test.yml` passes: every expected alert, with its labels
    and rendered annotations, and no other."""
    done = subprocess.run(
        [_promtool(), "test", "rules", ALERT_TESTS.name],
        cwd=RULES_DIR,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"promtool test rules failed:\n{done.stdout}{done.stderr}"
    assert "SUCCESS" in done.stdout
