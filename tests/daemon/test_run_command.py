"""``factsync run`` and ``factsync policy check`` from the command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from factsync.daemon.data_dir_lock import lock_data_dir

SHIPPED = Path(__file__).resolve().parents[2] / "policies"


def factsync(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "factsync", *args], capture_output=True,
                          text=True, timeout=120)


def test_a_bad_config_stops_start_up_naming_the_key(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(tmp_path), "api": {"prot": 1}}))
    result = factsync("run", "--config", str(config))
    assert result.returncode == 1
    assert "config.api: unknown key(s) prot" in result.stderr


def test_a_second_instance_on_the_same_data_directory_refuses_to_start(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(tmp_path), "api": {"port": 0},
                                      "metrics": {"port": 0}}))
    held = lock_data_dir(tmp_path)
    try:
        result = factsync("run", "--config", str(config))
    finally:
        held.close()
    assert result.returncode == 1
    assert "another factsync process is using" in result.stderr


def test_policy_check_explains_a_valid_policy_and_names_the_wrong_key(tmp_path):
    result = factsync("policy", "check", str(SHIPPED / "strict.yaml"))
    assert result.returncode == 0
    assert "valid (policy 'strict'" in result.stdout
    assert "perplexity_ratio at most 0.01 above live" in result.stdout
    assert "For P106 facts instead" in result.stdout
    assert "canary < 1 on 1 check(s) in a row" in result.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("editing:\n  max_iterations: -1\n")
    result = factsync("policy", "check", str(bad))
    assert result.returncode == 1
    assert "bad.yaml.editing: max_iterations must be at least 1, got -1" in result.stderr
