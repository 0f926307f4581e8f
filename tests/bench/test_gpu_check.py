"""``scripts/gpu-check --smoke``: the device check's whole path, on a tiny shape on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu-check"


def test_the_smoke_check_writes_its_tests_json_and_table(tmp_path):
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "OUT"} | {"PYTHON": sys.executable}
    done = subprocess.run([str(SCRIPT), "--smoke", str(out)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "skipped" in (out / "gpu-tests.txt").read_text()  # no CUDA here
    record = json.loads((out / "gpu-check.json").read_text())
    assert record["device"] == "cpu" and record["dtype"] == "float32"
    assert record["statistics"]["tokens"] == 2000 and record["statistics"]["seconds"] > 0
    assert [job["facts"] for job in record["jobs"]] == [1, 4]
    for job in record["jobs"]:
        assert job["seconds_per_fact"] == pytest.approx(
            job["optimisation_seconds_per_fact"] + job["spread_seconds_per_fact"])
        assert job["optimisation_seconds_per_fact"] > 0 and job["spread_seconds_per_fact"] > 0
        assert job["peak_gib"] is None
    table = (out / "gpu-check.txt").read_text()
    assert table == done.stdout[-len(table):]
    assert "facts/job | optimisation s/fact" in table
