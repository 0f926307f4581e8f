"""Monitoring and automatic rollback end to end on the real default model."""

from __future__ import annotations

import json
import urllib.request

import pytest
import torch
from peft import PeftModel

from factsync.editing.delta import ModelDelta
from factsync.jobs.model_state import ModelState
from factsync.models.loading import load_model

pytestmark = pytest.mark.real_model

LAX = {
    "name": "lax",
    "batch": {"coalesce_seconds": 0.5},
    "gates": [{"metric": "efficacy_accuracy", "min": 1.0}],
    # Instrument facts can never pass: they make the rejected job of this test.
    "relations": {"P1303": {"gates": [{"metric": "paraphrase_success", "min": 1.1}]}},
    "on_failure": "reject",
    "monitor": {"interval_seconds": 2,
                "rules": [{"metric": "canary", "min": 0.9, "consecutive": 2}]},
}
CAPITALS = [("France", "Lyon"), ("Germany", "Munich"), ("Italy", "Milan"), ("Japan", "Osaka")]


def write_jsonl(path, rows) -> None:  # noqa: ANN001
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def alertmanager_alerts(url: str) -> set[str]:
    with urllib.request.urlopen(f"{url}/api/v2/alerts?active=true", timeout=5) as response:
        return {a["labels"]["alertname"] for a in json.loads(response.read())}


def test_a_regressing_version_is_rolled_back_and_operators_are_told(
    tmp_path, daemon_process, alertmanager
):
    daemon = daemon_process(tmp_path, policy=LAX, alerts={"alertmanager_url": alertmanager})
    daemon.start()
    write_jsonl(daemon.facts_dir / "instruments.jsonl",
                [{"subject": "Toko Yasuda", "relation": "P1303", "object": "piano"}])
    daemon.wait_for(lambda: [j for j in daemon.get("/jobs") if j["state"] == "rejected"], 600,
                    "the instrument job to be rejected")
    daemon.wait_for(lambda: "FactsyncJobRejected" in alertmanager_alerts(alertmanager), 30,
                    "the rejection alert in Alertmanager")

    write_jsonl(daemon.facts_dir / "people.jsonl",
                [{"subject": "Danielle Darrieux", "relation": "P103", "object": "English"}])
    good = daemon.wait_for(lambda: [v for v in daemon.get("/versions") if v["seq"] == 1], 600,
                           "the good version")[0]
    ok_checks = 'factsync_monitor_checks_total{outcome="ok"}'
    clean_before = daemon.metric(ok_checks)
    daemon.wait_for(lambda: daemon.metric(ok_checks) >= clean_before + 2, 60,
                    "two clean monitor checks of the good version")

    write_jsonl(daemon.facts_dir / "capitals.jsonl",
                [{"subject": s, "relation": "capital", "object": o} for s, o in CAPITALS])
    bad = daemon.wait_for(lambda: [v for v in daemon.get("/versions") if v["seq"] == 2], 600,
                          "the regressing version")[0]
    daemon.wait_for(lambda: daemon.get("/status")["live_version"]["id"] == good["id"], 120,
                    "the monitor to roll back")
    history = daemon.get("/status")["live_history"]
    latency = history[-1]["at"] - bad["created_at"]
    print(f"\nrollback {latency:.1f} s after the regressing version was promoted")
    assert history[-1]["reason"].startswith("monitor: canary < 0.9 on 2 check(s) in a row")

    daemon.wait_for(lambda: daemon.metric('factsync_rollbacks_total{trigger="monitor"}') == 1,
                    30, "the rollback to be counted")
    daemon.wait_for(lambda: "FactsyncRollback" in alertmanager_alerts(alertmanager), 30,
                    "the rollback alert in Alertmanager")
    versions = {v["seq"]: v for v in daemon.get("/versions")}
    assert versions[2]["status"] == "rolled_back" and versions[1]["live"]
    status, answer = daemon.post("/generate", {"prompt": "The capital of France is",
                                               "max_new_tokens": 3})
    assert answer["text"].strip().startswith("Paris")
    status, answer = daemon.post("/generate", {
        "prompt": "The native language of Danielle Darrieux is", "max_new_tokens": 3})
    assert answer["text"].strip().startswith("English")
    facts = {f["subject"]: f for f in daemon.get("/facts?relation=P36")}
    assert facts["France"]["state"] == "rolled_back"
    assert "version" in daemon.get("/quarantine")[0]["location"]

    # The served weights are exactly the good version rebuilt from the base.
    rebuilt = ModelState(load_model("default", device="cpu"))
    rebuilt.rebuild([ModelDelta.load(tmp_path / "versions" / good["id"] / "delta.safetensors")],
                    version_id=good["id"])
    assert daemon.get("/weights") == {"version": good["id"], "sha256": rebuilt.digest()}

    # The exported adapter follows the live version (once the worker has written it, just
    # after the live pointer moved) and reproduces its logits.
    current = tmp_path / "exports" / "adapter" / "current"
    daemon.wait_for(lambda: current.resolve().name == good["id"], 120,
                    "the adapter export of the good version")
    adapter = current.resolve()
    base = load_model("default", device="cpu").model
    with_adapter = PeftModel.from_pretrained(base, adapter).eval()
    ids = torch.tensor([rebuilt.work.prefix_ids + rebuilt.work.tokenizer(
        "The native language of Danielle Darrieux is")["input_ids"]])
    with torch.no_grad():
        difference = (with_adapter(input_ids=ids).logits
                      - rebuilt.work.model(input_ids=ids).logits).abs().max().item()
    print(f"adapter vs merged live model: max |logit difference| {difference:.2e}")
    assert difference < 1e-3
