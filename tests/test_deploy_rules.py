"""The shipped Prometheus alert rules pass promtool's checks and their unit tests."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

RULES = Path(__file__).resolve().parents[1] / "deploy" / "prometheus"


@pytest.fixture
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("CI must install promtool (Debian package prometheus)")
        pytest.skip("promtool is not installed")
    return path


def test_alert_rules_are_valid_and_their_unit_tests_pass(promtool):
    for args in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"]):
        result = subprocess.run([promtool, *args], cwd=RULES, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


def test_every_rule_has_a_severity_and_a_runbook_and_names_exported_metrics():
    import yaml
    from prometheus_client import CollectorRegistry

    from factsync.daemon.metrics import Metrics
    from factsync.executors.local import FleetStatus

    registry = CollectorRegistry()
    # The executor's metrics exist once a Ray fleet is watched.
    Metrics(registry).watch_fleet(lambda: FleetStatus(workers=2, busy=0, failures=0))
    exported = {m.name + ("_total" if m.type == "counter" else "")
                for m in registry.collect()} | {m.name for m in registry.collect()}
    for rule in yaml.safe_load((RULES / "alerts.yml").read_text())["groups"][0]["rules"]:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["runbook"].strip(), rule["alert"]
        names = set(re.findall(r"factsync_[a-z_]+", rule["expr"]))
        assert names <= exported, (rule["alert"], names - exported)
