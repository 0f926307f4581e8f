"""``factsync bench serving`` on a tiny model: the daemon's exports, scored three ways."""

from __future__ import annotations

import json

from factsync.cli import main


def test_the_served_adapter_and_merged_checkpoint_score_like_the_live_model(
    tiny_model_dir, tmp_path, monkeypatch, capsys, counterfact_file
):
    monkeypatch.setenv("FACTSYNC_HOME", str(tmp_path / "home"))
    report = tmp_path / "serving.json"
    code = main([
        "bench", "serving", "--data", str(counterfact_file), "--n", "10", "--batch", "3",
        "--max-rank", "8", "--verify-sample", "2", "--model", str(tiny_model_dir),
        "--device", "cpu", "--corpus-tokens", "1000", "--work-dir", str(tmp_path / "data"),
        "--json", str(report),
    ])
    assert code == 0
    data = json.loads(report.read_text())
    assert (data["n"], data["batch"], data["max_rank"]) == (10, 3, 8)
    # Each fact writes one key direction per layer here: the third job passes rank 8 and
    # is folded, and the last job's adapter applies to that fold.
    assert data["folds"] == 1
    assert data["adapter"]["rank"] == 1 and "/exports/base/" in data["adapter"]["base"]
    for name in ("adapter", "merged"):
        for score in ("edit_success", "paraphrase_success"):
            assert abs(data[name][score] - data["live"][score]) <= 0.01, (name, score)
    assert data["merged"]["version"] == data["live"]["version"]
    assert len(data["export_seconds"]["each"]) == 4
    assert data["adapter"]["version"] == data["live"]["version"]
    assert data["export_seconds"]["first"] == data["export_seconds"]["each"][0] > 0
    # Each export is verified on the facts it adds and two drawn from all applied ones.
    added = [3, 3, 3, 1]
    for probes, new in zip(data["export_seconds"]["probes"], added, strict=True):
        assert new <= probes <= new + 2
    assert sum(data["export_seconds"]["probes"]) > sum(added)  # earlier facts are probed too
    for total, verifying in zip(data["export_seconds"]["each"],
                                data["export_seconds"]["verifying"], strict=True):
        assert 0 < verifying < total
    table = capsys.readouterr().out
    assert f"folds {data['folds']}" in table and "adapter    |" in table
    assert "export seconds per job (verifying, probes): " in table
