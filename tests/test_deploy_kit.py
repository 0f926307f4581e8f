"""The deployment kit stays consistent with the code: metrics, rules, configs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from factsync.daemon.config import load_config
from factsync.daemon.metrics import Metrics

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
ROOT = DEPLOY.parent


def exported_names() -> set[str]:
    registry = CollectorRegistry()
    Metrics(registry)
    names = set()
    for family in registry.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        if family.type == "counter":
            names.add(family.name + "_total")
        if family.type == "histogram":
            names.update(family.name + s for s in ("_bucket", "_sum", "_count"))
        if family.type == "info":
            names.add(family.name + "_info")
    return names


def test_every_dashboard_query_names_an_exported_metric():
    dashboard = json.loads((DEPLOY / "grafana/dashboards/factsync.json").read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(queries) >= 10
    used = {name for q in queries for name in re.findall(r"factsync_[a-z_]+", q)}
    assert used and used <= exported_names(), used - exported_names()
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for topic in ("sync lag", "jobs by outcome", "live vs last candidate", "rollbacks",
                  "quarantine"):
        assert topic in titles


def test_kubernetes_manifests_embed_the_shipped_files_unchanged():
    documents = {d["kind"]: d for d in yaml.safe_load_all((DEPLOY / "k8s/factsync.yaml")
                                                         .read_text())}
    assert documents["PrometheusRule"]["spec"] == yaml.safe_load(
        (DEPLOY / "prometheus/alerts.yml").read_text())
    data = documents["ConfigMap"]["data"]
    assert data["factsync.yaml"] == (DEPLOY / "factsync.yaml").read_text()
    assert data["policy.yaml"] == (ROOT / "policies/default.yaml").read_text()
    container = documents["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {"ServiceMonitor", "Service", "Secret", "PersistentVolumeClaim"} <= set(documents)


def test_the_container_config_is_valid_and_needs_a_token(tmp_path, monkeypatch):
    config = yaml.safe_load((DEPLOY / "factsync.yaml").read_text())
    config["policy"] = str(ROOT / "policies/default.yaml")
    config["data_dir"] = str(tmp_path)
    path = tmp_path / "factsync.yaml"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.delenv("FACTSYNC_API_TOKEN", raising=False)
    with pytest.raises(ValueError, match="set api.token"):
        load_config(path)
    monkeypatch.setenv("FACTSYNC_API_TOKEN", "t")
    assert load_config(path).api.token == "t"


def test_compose_wires_every_service_to_a_shipped_file():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    assert set(compose["services"]) == {"factsync", "prometheus", "alertmanager", "grafana"}
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), source


def test_the_systemd_unit_runs_the_daemon_as_its_own_user():
    unit = (DEPLOY / "systemd/factsync.service").read_text()
    assert "ExecStart=/opt/factsync/bin/factsync run --config" in unit
    assert "User=factsync" in unit and "KillSignal=SIGTERM" in unit


def test_promtool_accepts_the_shipped_prometheus_config():
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI"):
            pytest.fail("CI must install promtool (Debian package prometheus)")
        pytest.skip("promtool is not installed")
    result = subprocess.run([promtool, "check", "config", "prometheus.yml"],
                            cwd=DEPLOY / "prometheus", capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_kuberay_manifest_embeds_the_ray_config_and_its_head_is_the_configured_address(
        tmp_path, monkeypatch, tiny_model_dir):
    documents = {d["kind"]: d for d in yaml.safe_load_all((DEPLOY / "k8s/ray-cluster.yaml")
                                                         .read_text())}
    data = documents["ConfigMap"]["data"]
    assert data["factsync.yaml"] == (DEPLOY / "factsync-ray.yaml").read_text()
    assert data["policy.yaml"] == (ROOT / "policies/default.yaml").read_text()
    cluster = documents["RayCluster"]
    assert cluster["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    workers = cluster["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert workers["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"mountPath": "/models", "name": "models", "readOnly": True} in workers["volumeMounts"]

    config = yaml.safe_load(data["factsync.yaml"])
    assert config["model"]["path"].startswith("/models/")  # the workers' shared mount
    config["model"]["path"] = str(tiny_model_dir)  # the model is not there on this machine
    config["policy"] = str(ROOT / "policies/default.yaml")
    config["data_dir"] = str(tmp_path)
    path = tmp_path / "factsync.yaml"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("FACTSYNC_API_TOKEN", "t")
    executor = load_config(path).executor
    assert executor.type == "ray" and executor.gpus_per_worker == 1
    assert executor.address == f"ray://{cluster['metadata']['name']}-head-svc:10001"


def test_the_single_host_multi_gpu_config_starts_ray_here():
    executor = load_config(DEPLOY / "factsync-multi-gpu.yaml").executor
    assert executor.type == "ray" and executor.address == ""
    assert executor.workers * executor.gpus_per_worker == 4
