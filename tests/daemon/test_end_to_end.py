"""The daemon end to end on the real default model, as an operator would run it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest
import yaml

pytestmark = pytest.mark.real_model

FAST = {"batch": {"coalesce_seconds": 0.5}}
IMPOSSIBLE = {
    "name": "impossible",
    "batch": {"coalesce_seconds": 0.5},
    "gates": [{"metric": "perplexity_ratio", "max": 0.5}],
    "on_failure": "reject",
}
FACTS = [
    {"subject": "France", "relation": "capital", "object": "Paris"},  # already true
    {"subject": "Danielle Darrieux", "relation": "P103", "object": "English"},
    {"subject": "Toko Yasuda", "relation": "instrument", "object": "piano"},
    {"subject": "Nobody", "relation": "P103"},  # malformed: no object
]
PROMPTS = {
    "The native language of Danielle Darrieux is": "English",
    "Toko Yasuda plays the instrument": "piano",
}


def write_jsonl(path, rows) -> None:  # noqa: ANN001
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text("".join(json.dumps(r) + "\n" for r in rows))
    staging.rename(path)  # as editors and sync tools do: write, then rename into place


def test_facts_file_to_promoted_version_restart_and_rejection(tmp_path, daemon_process):
    daemon = daemon_process(tmp_path, policy=FAST)
    daemon.start()
    try:
        for prompt, wanted in PROMPTS.items():
            assert not daemon.post("/generate", {"prompt": prompt, "max_new_tokens": 4})[1][
                "text"].strip().startswith(wanted)
        write_jsonl(daemon.facts_dir / "people.jsonl", FACTS)
        versions = daemon.wait_for(
            lambda: [v for v in daemon.get("/versions") if v["live"] and v["seq"] == 1],
            600, "a promoted version",
        )
        live = versions[0]
        assert {f["subject"] for f in live["facts"]} == {"Danielle Darrieux", "Toko Yasuda"}
        assert all(g["passed"] for g in live["report"]["gates"] if not g["dry_run"])
        for prompt, wanted in PROMPTS.items():
            status, answer = daemon.post("/generate", {"prompt": prompt, "max_new_tokens": 4})
            assert status == 200 and answer["text"].strip().startswith(wanted), answer

        daemon.wait_for(lambda: daemon.metric("factsync_promotions_total") == 1, 30,
                        "the promotion to be counted")
        assert daemon.metric('factsync_facts_quarantined_total{source="file:facts"}') == 1
        assert daemon.metric('factsync_jobs_total{outcome="promoted"}') == 1
        quarantine = daemon.get("/quarantine")
        assert [(q["location"], q["reason"]) for q in quarantine] == [
            ("people.jsonl:4", "missing field 'object'")
        ]
        facts = {f["subject"]: f for f in daemon.get("/facts")}
        assert facts["France"]["state"] == "already_true"
        assert facts["Danielle Darrieux"]["applied_by"] == live["id"]
        assert daemon.stop() == 0

        # Restart on the same state: the live version is rebuilt and nothing re-edited.
        daemon.start()
        assert daemon.get("/status")["live_version"]["id"] == live["id"]
        status, answer = daemon.post("/generate", {
            "prompt": "The native language of Danielle Darrieux is", "max_new_tokens": 4})
        assert answer["text"].strip().startswith("English")
        daemon.wait_for(lambda: daemon.get("/status")["connectors"][0]["last_success"], 30,
                        "the start-up scan")
        assert daemon.get("/status")["pending_changes"] == 0
        assert len(daemon.get("/jobs")) == 1
        assert daemon.stop() == 0

        # A policy no candidate can pass: the next job is rejected, the live version stays.
        (tmp_path / "policy.yaml").write_text(yaml.safe_dump(IMPOSSIBLE))
        daemon.start()
        write_jsonl(daemon.facts_dir / "chips.jsonl",
                    [{"subject": "Apple A5", "relation": "manufacturer", "object": "Google"}])
        job = daemon.wait_for(
            lambda: [j for j in daemon.get("/jobs") if j["state"] == "rejected"], 600,
            "a rejected job",
        )[0]
        failing = [g for g in job["report"]["gates"] if not g["passed"]]
        assert [g["metric"] for g in failing] == ["perplexity_ratio"]
        assert daemon.get("/status")["live_version"]["id"] == live["id"]
        assert daemon.metric('factsync_gate_failures_total{metric="perplexity_ratio"}') == 1
        assert daemon.metric('factsync_jobs_total{outcome="rejected"}') == 1
        chip = daemon.get("/facts?subject=Apple%20A5")[0]
        assert chip["state"] == "failed" and "perplexity_ratio" in chip["reason"]
    finally:
        if daemon.process and daemon.process.poll() is None:
            daemon.stop()
    jobs = subprocess.run(
        [sys.executable, "-m", "factsync", "jobs", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, check=True,
    ).stdout
    assert "rejected" in jobs and "perplexity_ratio" in jobs


def test_a_job_killed_while_editing_completes_exactly_once_after_restart(
    tmp_path, daemon_process
):
    daemon = daemon_process(tmp_path, policy=FAST)
    daemon.start()
    try:
        write_jsonl(daemon.facts_dir / "one.jsonl",
                    [{"subject": "Danielle Darrieux", "relation": "P103", "object": "English"}])
        daemon.wait_for(lambda: [j for j in daemon.get("/jobs") if j["state"] == "editing"],
                        300, "the job to start editing")
        assert daemon.stop(signal.SIGKILL) == -signal.SIGKILL

        daemon.start()
        daemon.wait_for(lambda: [j for j in daemon.get("/jobs") if j["state"] == "promoted"],
                        600, "the rerun job to be promoted")
        jobs = daemon.get("/jobs")
        assert len(jobs) == 1
        events = daemon.get(f"/jobs/{jobs[0]['id']}")["events"]
        assert [e["state"] for e in events] == [
            "queued", "preparing", "editing", "queued", "preparing", "editing", "evaluating",
            "promoted",
        ]
        assert "interrupted while editing" in events[3]["reason"]
        versions = daemon.get("/versions")
        assert [v["seq"] for v in versions] == [1, 0]
        assert len(versions[0]["facts"]) == 1
        assert sorted(p.name for p in (tmp_path / "versions").iterdir()) == [versions[0]["id"]]
        status, answer = daemon.post("/generate", {
            "prompt": "The native language of Danielle Darrieux is", "max_new_tokens": 4})
        assert answer["text"].strip().startswith("English")
    finally:
        if daemon.process and daemon.process.poll() is None:
            daemon.stop()
