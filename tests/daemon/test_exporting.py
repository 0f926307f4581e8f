"""Exports after a live-version change, and serving engines told over real HTTP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from safetensors.torch import load_file, save_file

from factsync.cli import main
from factsync.commands.export import DIVERGED
from factsync.daemon.alerts import Alerter
from factsync.daemon.config import ExportConfig
from factsync.daemon.export_verification import ADAPTER, ExportVerifier
from factsync.daemon.exporting import Exporter
from factsync.daemon.metrics import Metrics
from factsync.editing.delta import ModelDelta
from factsync.editing.engine_state import EngineState
from factsync.facts.records import FactRecord
from factsync.jobs.model_state import ModelState
from factsync.jobs.preparation import states
from factsync.models.generation import greedy
from factsync.registry.exports import ExportDir
from factsync.registry.serving import SGLANG, VLLM, RuntimeLoraNotifier, WebhookServingNotifier
from factsync.registry.versions import VersionFiles
from factsync.store.store import StateStore


@pytest.fixture
def setup(tmp_path, tiny_loaded):
    store = StateStore(tmp_path / "state.sqlite")
    models = ModelState(tiny_loaded("llama"))
    versions = VersionFiles(tmp_path / "versions")
    metrics = Metrics(CollectorRegistry())
    alerter = Alerter([], metrics)
    yield store, models, versions, metrics, alerter
    alerter.close()
    store.close()


def promote(store, versions, models, delta, subject):  # noqa: ANN001, ANN201
    change = store.record_desired(
        record=FactRecord(subject, "P36", "X", "t", "x"), relation="P36")
    job = store.create_job(change_ids=[change.id], policy_digest="p")
    live = store.live_version()
    version_id = versions.write(parent_id=live.id, save_delta=delta.save,
                                save_state=EngineState.empty().save,
                                facts=[{"subject": subject}], manifest={})
    store.promote(job_id=job.id, version_id=version_id, parent_id=live.id, policy_digest="p",
                  report={}, applied={change.id: "Y"}, left_out={})
    models.promote(delta, version_id=version_id)
    return version_id


@pytest.mark.parametrize("api", [VLLM, SGLANG], ids=lambda api: api.engine)
def test_each_change_exports_an_adapter_and_switches_the_engine_then_the_webhook(
    tmp_path, setup, random_delta, http_receiver, lora_server, api
):
    store, models, versions, metrics, alerter = setup
    exports = ExportDir(tmp_path / "exports")
    engine = lora_server(api)
    exporter = Exporter(
        settings=ExportConfig(adapter=True, merged=True, max_rank=8), exports=exports,
        versions=versions, store=store, models=models, base_model="base",
        notifiers=[RuntimeLoraNotifier(api, engine.url),
                   WebhookServingNotifier(http_receiver.url)],
        alerter=alerter, metrics=metrics,
    )
    first = promote(store, versions, models, random_delta(models.work, [1], seed=1), "A")
    summary = exporter.export_live("promoted")
    assert summary["adapter_error"] < 1e-6
    assert exports.current("adapter").name == first
    assert (exports.current("merged") / "config.json").is_file()
    second = promote(store, versions, models, random_delta(models.work, [2], seed=2), "B")
    exporter.export_live("promoted")
    exporter.close()
    assert exports.current("adapter").name == second
    assert engine.refusals == []
    assert engine.calls == [("load", f"factsync-{first}"), ("load", f"factsync-{second}"),
                            ("unload", f"factsync-{first}")]
    assert engine.loaded == {f"factsync-{second}": str(exports.root / "adapter" / second)}
    assert http_receiver.bodies == [
        {"event": "promoted", "version": version, "previous": previous, "base": "base",
         "adapter": str(exports.root / "adapter" / version),
         "merged": str(exports.root / "merged" / version)}
        for version, previous in ((first, None), (second, first))]
    assert alerter.active() == []


def test_an_adapter_the_engine_refuses_is_alerted(tmp_path, setup, random_delta, lora_server):
    store, models, versions, metrics, alerter = setup
    engine = lora_server(VLLM, max_lora_rank=2)
    exporter = Exporter(
        settings=ExportConfig(max_rank=8), exports=ExportDir(tmp_path / "exports"),
        versions=versions, store=store, models=models, base_model="base",
        notifiers=[RuntimeLoraNotifier(VLLM, engine.url)], alerter=alerter,
        metrics=metrics, retries=1, backoff_seconds=0.01,
    )
    promote(store, versions, models, random_delta(models.work, [1], seed=1, rank=4), "A")
    exporter.export_live("promoted")
    exporter.close()
    assert engine.loaded == {} and "above max_lora_rank 2" in engine.refusals[0]
    assert [a.name for a in alerter.active()] == ["FactsyncServingNotifyFailed"]


def test_a_serving_engine_that_stays_down_is_alerted_and_counted(
    tmp_path, setup, random_delta
):
    store, models, versions, metrics, alerter = setup
    exporter = Exporter(
        settings=ExportConfig(), exports=ExportDir(tmp_path / "exports"), versions=versions,
        store=store, models=models, base_model="base",
        notifiers=[RuntimeLoraNotifier(VLLM, "http://127.0.0.1:9", timeout=0.5)], alerter=alerter,
        metrics=metrics, retries=2, backoff_seconds=0.05,
    )
    promote(store, versions, models, random_delta(models.work, [1], seed=1), "A")
    exporter.export_live("promoted")
    exporter.close()
    assert metrics.registry.get_sample_value(
        "factsync_serving_notify_failures_total", {"notifier": "vllm"}) == 1
    assert [a.name for a in alerter.active()] == ["FactsyncServingNotifyFailed"]


PROMPTS = [f"The {word} of item {n} is" for word in ("owner", "capital", "colour", "maker")
           for n in range(12)]


def answered(loaded, prompts) -> list[tuple[str, str]]:  # noqa: ANN001
    """Each prompt with the one-token answer the model gives it, where that answer reads
    back as an object (teacher forced, the way probes are scored)."""
    pairs = [(prompt, greedy(loaded, prompt, 1)) for prompt in prompts]
    return [pair for pair, ok in zip(pairs, states(loaded, pairs), strict=True) if ok]


def verified_exporter(tmp_path, setup, engine, tiny_model_dir, probes, max_rank, fold=True):  # noqa: ANN001, ANN201, E501
    store, models, versions, metrics, alerter = setup
    verifier = ExportVerifier(device="cpu", dtype="float32", probes=lambda version, served: probes,
                              tolerance=0.0)
    return Exporter(settings=ExportConfig(max_rank=max_rank, merged=True, fold=fold),
                    exports=ExportDir(tmp_path / "x"), versions=versions, store=store,
                    models=models, base_model=str(tiny_model_dir),
                    notifiers=[RuntimeLoraNotifier(VLLM, engine.url)], alerter=alerter,
                    metrics=metrics, verifier=verifier, retries=1)


def test_an_export_that_answers_like_the_live_model_is_served(
    tmp_path, setup, random_delta, lora_server, tiny_model_dir, tiny_loaded
):
    store, models, versions, metrics, alerter = setup
    engine = lora_server(VLLM)
    version = promote(store, versions, models,
                      random_delta(models.work, [1, 2], rank=4, scale=1.0, seed=4), "A")
    probes = answered(models.serving, PROMPTS)
    assert len(probes) >= 10
    assert not all(states(tiny_loaded("llama"), probes))  # the base alone would not pass
    exporter = verified_exporter(tmp_path, setup, engine, tiny_model_dir, probes, max_rank=8)
    summary = exporter.export_live("promoted")
    exporter.close()
    for kind in ("adapter", "merged"):
        assert summary["verification"][kind]["passed"]
        assert summary["verification"][kind]["agreement"] == 1.0
        assert ExportDir(tmp_path / "x").current(kind) == tmp_path / "x" / kind / version
    adapter = tmp_path / "x" / "adapter" / version
    assert json.loads((adapter / "verification.json").read_text())["probes"] == len(probes)
    assert engine.calls == [("load", f"factsync-{version}")]
    assert metrics.registry.get_sample_value(
        "factsync_export_agreement", {"kind": "adapter"}) == 1.0
    assert alerter.active() == []


def test_a_truncated_adapter_that_loses_facts_is_caught_alerted_and_not_announced(
    tmp_path, setup, random_delta, lora_server, tiny_model_dir
):
    store, models, versions, metrics, alerter = setup
    engine = lora_server(VLLM)
    previous = promote(store, versions, models,
                       random_delta(models.work, [1], rank=8, scale=0.3, seed=5), "A")
    probes = answered(models.serving, PROMPTS)  # the verifier reads this list when it runs
    exporter = verified_exporter(tmp_path, setup, engine, tiny_model_dir, probes, max_rank=8,
                                 fold=False)
    exporter.export_live("promoted")  # rank 8 fits: served
    version = promote(store, versions, models,
                      random_delta(models.work, [1], rank=12, scale=0.5, seed=6), "B")
    probes[:] = answered(models.serving, PROMPTS)
    summary = exporter.export_live("promoted")
    exporter.close()

    verdict = summary["verification"]["adapter"]
    assert summary["adapter_error"] > 0.1 and not verdict["passed"] and verdict["differing"]
    assert summary["verification"]["merged"]["passed"]  # held back with the adapter
    exports = ExportDir(tmp_path / "x")
    for kind in ("adapter", "merged"):
        assert exports.current(kind) == exports.root / kind / previous
    assert (exports.root / "adapter" / version / "verification.json").is_file()
    assert engine.calls == [("load", f"factsync-{previous}")]
    [alert] = alerter.active()
    assert alert.name == "FactsyncExportDiverged" and version in alert.summary
    lost = {d["prompt"] for d in alert.details["adapter"]["differing"]}
    assert lost <= {prompt for prompt, _ in probes} and lost
    assert metrics.registry.get_sample_value(
        "factsync_exports_diverged_total", {"kind": "adapter"}) == 1


def test_an_export_of_a_version_no_longer_served_is_left_to_the_next(
    tmp_path, setup, random_delta, lora_server, tiny_model_dir
):
    store, models, versions, metrics, alerter = setup
    engine = lora_server(VLLM)
    promote(store, versions, models, random_delta(models.work, [1], seed=7), "A")
    models.rebuild([], version_id="a-later-one")
    exporter = verified_exporter(tmp_path, setup, engine, tiny_model_dir, [], max_rank=8)
    assert exporter.export_live("promoted")["superseded"]
    exporter.close()
    assert ExportDir(tmp_path / "x").current("adapter") is None and engine.calls == []


def test_export_verify_compares_each_fact_and_flags_a_damaged_adapter(
    tmp_path, setup, random_delta, tiny_model_dir, tiny_loaded, capsys
):
    store, models, versions, metrics, alerter = setup
    delta = random_delta(models.work, [1, 2], rank=4, scale=1.0, seed=4)
    delta.apply(models.work)
    subjects = [f"{word} {n}" for word in ("Item", "Town", "Lake", "Firm") for n in range(30)]
    facts = answered(models.work, [f"The capital of {s} is" for s in subjects])
    assert len(facts) >= 8 and not all(states(tiny_loaded("llama"), facts))
    changes = [store.record_desired(record=FactRecord(prompt.removeprefix("The capital of ")
                                                      .removesuffix(" is"), "P36", obj, "t", "x"),
                                    relation="P36") for prompt, obj in facts]
    job = store.create_job(change_ids=[c.id for c in changes], policy_digest="p")
    version = versions.write(parent_id=store.live_version().id, save_delta=delta.save,
                             save_state=EngineState.empty().save, facts=[], manifest={})
    store.promote(job_id=job.id, version_id=version, parent_id=store.live_version().id,
                  policy_digest="p", report={}, applied={c.id: None for c in changes},
                  left_out={})
    models.promote(delta, version_id=version)
    exporter = Exporter(settings=ExportConfig(merged=True), exports=ExportDir(tmp_path / "exports"),
                        versions=versions, store=store, models=models,
                        base_model=str(tiny_model_dir),
                        notifiers=[], alerter=alerter, metrics=metrics)
    exporter.export_live("promoted")
    exporter.close()
    config = tmp_path / "factsync.yaml"
    config.write_text(f"data_dir: {tmp_path}\nmodel: {{path: {tiny_model_dir}}}\n")

    assert main(["export", "verify", "--config", str(config), "--all"]) == 0
    table = capsys.readouterr().out
    assert f"adapter of {version}: passes; answers {len(facts)} of {len(facts)}" in table
    assert f"merged of {version}: passes" in table
    assert table.count("| yes   | yes     | yes") == len(facts)

    weights = tmp_path / "exports" / "adapter" / version / "adapter_model.safetensors"
    tensors = load_file(weights)
    save_file({name: t * 0 if "lora_B" in name else t for name, t in tensors.items()}, weights)
    assert main(["export", "verify", version, "--config", str(config)]) == DIVERGED
    table = capsys.readouterr().out
    assert f"adapter of {version}: DIVERGES" in table and f"merged of {version}: passes" in table
    lost = [fact for fact, ok in zip(facts, states(tiny_loaded("llama"), facts), strict=True)
            if not ok]
    assert lost and all(f"{prompt} -> {obj.strip()}"[:60] in table for prompt, obj in lost)
    assert table.count("| yes   | no      | yes") == len(lost)


def test_a_chain_past_the_rank_budget_is_folded_into_a_new_serving_base(
    tmp_path, setup, random_delta, lora_server, http_receiver, tiny_model_dir
):
    store, models, versions, metrics, alerter = setup
    engine = lora_server(VLLM)
    probes: list[tuple[str, str]] = []
    exports = ExportDir(tmp_path / "x")
    exporter = Exporter(
        settings=ExportConfig(max_rank=8, fold=True), exports=exports, versions=versions,
        store=store, models=models, base_model=str(tiny_model_dir),
        notifiers=[RuntimeLoraNotifier(VLLM, engine.url),
                   WebhookServingNotifier(http_receiver.url)],
        alerter=alerter, metrics=metrics, retries=1,
        verifier=ExportVerifier(device="cpu", dtype="float32", tolerance=0.0,
                                probes=lambda version, served: probes))

    def step(seed: int) -> tuple[str, dict]:
        version = promote(store, versions, models,
                          random_delta(models.work, [1, 2], rank=4, scale=0.3, seed=seed),
                          f"S{seed}")
        probes[:] = answered(models.serving, PROMPTS)
        return version, exporter.export_live("promoted")

    first, summary = step(1)
    assert summary["adapter_rank"] == 4 and summary["base"] == str(tiny_model_dir)
    second, summary = step(2)
    assert summary["adapter_rank"] == 8 and "folded" not in summary
    third, summary = step(3)  # 12 > 8: folded, and nothing left for an adapter
    fold = exports.root / "base" / third
    assert summary["folded"] == str(fold) and (fold / "config.json").is_file()
    assert exports.current("base") == fold and exports.current("adapter") is None
    assert ADAPTER not in summary and summary["base"] == str(fold)
    assert store.folds()[third].checkpoint == str(fold)
    assert "rank 12, above export.max_rank 8" in store.folds()[third].reason
    fourth, summary = step(4)  # an adapter on the fold, verified on it
    assert summary["adapter_rank"] == 4 and summary["verification"]["adapter"]["passed"]
    config = json.loads((exports.root / "adapter" / fourth / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(fold)
    assert exports.current("base") == fold
    assert exports.current("adapter") == exports.root / "adapter" / fourth

    store.rollback(to_version_id=second, reason="test", requeue=False)
    models.rebuild([ModelDelta.load(versions.delta_path(v)) for v in (first, second)],
                   version_id=second)
    probes[:] = answered(models.serving, PROMPTS)
    summary = exporter.export_live("rolled_back")  # across the fold: the first base again
    exporter.close()
    assert summary["base"] == str(tiny_model_dir) and summary["adapter_rank"] == 8
    assert exports.current("adapter") == exports.root / "adapter" / second
    assert exports.current("base") is None  # the base model again

    told = [(b["version"], b["base"], b["adapter"] and Path(b["adapter"]).name)
            for b in http_receiver.bodies]
    assert told == [(first, str(tiny_model_dir), first), (second, str(tiny_model_dir), second),
                    (third, str(fold), None), (fourth, str(fold), fourth),
                    (second, str(tiny_model_dir), second)]
    # vLLM keeps the base it started on: it is told to restart on the fold, then loads
    # the next adapter as if restarted there, and is told to restart again on rollback.
    assert engine.calls == [("load", f"factsync-{first}"), ("load", f"factsync-{second}"),
                            ("unload", f"factsync-{first}"), ("load", f"factsync-{fourth}")]
    [alert] = alerter.active()
    assert alert.name == "FactsyncServingNotifyFailed"
    assert f"restart vllm on {tiny_model_dir}" in alert.summary
