"""``factsync bench lifelong`` on tiny models: checkpoints, restored weights and reports."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from factsync.bench.canary_facts import (
    canaries_stated,
    canary_holds,
    daemon_canaries,
    pick_canaries,
    unrewritten,
)
from factsync.bench.lifelong import LifelongRun, checkpoint_facts, chosen_methods, run_lifelong
from factsync.bench.lifelong_report import (
    ALIASES,
    SHORT_NAMES,
    format_interventions,
    from_json,
    to_json,
)
from factsync.bench.lifelong_resume import INDEX
from factsync.bench.lifelong_scoring import METRICS, RECORD_METRICS, Yardstick
from factsync.bench.norm_growth import NormGrowth, growth_summary
from factsync.cli import main
from factsync.editing.corpus import corpus_digest, load_text_files
from factsync.editing.engine import EngineSettings
from factsync.editing.requests import EditRequest
from factsync.evaluation.cases import EvalCase
from factsync.evaluation.suites import load_cases, prepare_suite
from factsync.models.specs import get_module
from factsync.policies.schema import load_policy, shipped_policy_dir
from factsync.typed_yaml import SchemaError

FLUENCY = [
    "Once upon a time, in 1998, scientists found a new city in the north.",
    "Here is how to write a letter: Dear customer, thank you for your order.",
]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_norm_growth_is_zero_before_an_edit_and_positive_after(tiny_loaded, random_delta):
    loaded = tiny_loaded()
    growth = NormGrowth(loaded, [1, 2])
    assert growth.measure(loaded) == {1: 0.0, 2: 0.0}
    weight = get_module(loaded.model, loaded.spec.mlp_out_path(1)).weight
    base = weight.detach().clone()
    handle = random_delta(loaded, [1]).apply(loaded)
    expected = torch.linalg.matrix_norm(weight.detach() - base) / torch.linalg.matrix_norm(base)
    measured = growth.measure(loaded)
    assert measured[1] == pytest.approx(float(expected)) and measured[1] > 0
    assert measured[2] == 0.0
    assert growth_summary(measured) == (measured[1], measured[1] / 2)
    handle.revert()
    assert growth.measure(loaded) == {1: 0.0, 2: 0.0}


@pytest.mark.parametrize(
    ("n", "batch", "every", "expected"),
    [(6, 2, 2, [2, 4, 6]), (10, 3, 4, [6, 9, 10]), (5, 10, 100, [5]), (7, 2, 100, [7])],
)
def test_a_checkpoint_follows_the_job_that_reaches_each_multiple(n, batch, every, expected):
    assert checkpoint_facts(n, batch, every) == expected


def test_checkpoint_settings_are_checked():
    with pytest.raises(ValueError, match="checkpoint_every must be at least 1, got 0"):
        checkpoint_facts(10, 2, 0)


def test_default_is_the_shipped_default_policy_beside_the_counterfact_methods():
    methods = chosen_methods("default, memit+ime,default+alphaedit", EngineSettings(), 2)
    assert list(methods) == ["default", "memit+ime", "default+alphaedit"]
    shipped = load_policy(shipped_policy_dir() / "default.yaml")
    assert methods["default"] == shipped.editing.engine_settings()
    alpha = chosen_methods("default+alphaedit", EngineSettings(), 2)["default+alphaedit"]
    assert alpha.spread.algorithm == "alphaedit"
    assert replace(alpha, spread=methods["default"].spread) == methods["default"]
    assert methods["memit+ime"].max_iterations == 2 and not methods["memit+ime"].neighbours
    held = chosen_methods("default+hold-superseded", EngineSettings(), 2)["default+hold-superseded"]
    assert methods["default"].release_superseded and not held.release_superseded
    assert replace(held, release_superseded=True) == methods["default"]
    with pytest.raises(ValueError, match=r"unknown methods \['rome'\] in 'memit,rome'; "
                       "choose from default, default\\+alphaedit, "
                       r"default\+hold-superseded, memit.* or a "
                       r"policy file \(\.yaml\)"):
        chosen_methods("memit,rome", EngineSettings(), 2)


def test_a_policy_file_is_a_method_with_its_editing_settings(tmp_path):
    policy = tmp_path / "wide.yaml"
    policy.write_text("editing: {layers: [3, 4, 5, 6, 7, 8, 9], max_iterations: 2}\n")
    methods = chosen_methods(f"memit,{policy}", EngineSettings(), 2)
    assert list(methods) == ["memit", str(policy)]
    assert methods[str(policy)] == load_policy(policy).editing.engine_settings()
    assert methods[str(policy)].layers == (3, 4, 5, 6, 7, 8, 9)
    assert methods[str(policy)].max_iterations == 2
    policy.write_text("editing: {max_iterations: 0}\n")
    with pytest.raises(SchemaError, match="max_iterations"):
        chosen_methods(str(policy), EngineSettings(), 2)


def test_canaries_are_the_facts_the_unedited_model_prefers(tiny_loaded, counterfact_file):
    loaded = tiny_loaded()
    requests = [case.request for case in load_cases("counterfact", counterfact_file)]
    holds = canary_holds(loaded, requests)
    picked = pick_canaries(loaded, requests)
    assert picked == [r for r, held in zip(requests, holds, strict=True) if held]
    assert canary_holds(loaded, picked) == [1.0] * len(picked)
    swapped = [replace(r, old_object=r.new_object, new_object=r.old_object) for r in requests]
    assert canary_holds(loaded, swapped) == [1.0 - held for held in holds]


def test_daemon_canaries_are_those_the_model_states(tiny_loaded):
    loaded = tiny_loaded()
    # The tiny random model states none of the built-in canaries, nor "Paris" here.
    assert daemon_canaries(loaded) == []
    assert canaries_stated(loaded, [("The capital of France is", "Paris")]) == [0.0]


def test_canaries_a_stream_rewrites_are_left_out():
    # COUNTERFACT names relations: only a canary of the same subject and relation goes.
    japan = EvalCase(0, EditRequest("Japan", "The law in {} declares the language",
                                    "Italian", "Japanese"), (), (), relation="P37")
    candidates = [("Japan", "P37", "Japanese"), ("Japan", "P36", "Tokyo"),
                  ("France", "P37", "French")]
    assert unrewritten(candidates, [japan]) == candidates[1:]
    # ZsRE names none: every canary of the subject goes.
    asked = replace(japan, relation=None)
    assert unrewritten(candidates, [asked]) == candidates[2:]
    assert unrewritten(candidates, []) == candidates


def test_each_method_starts_from_the_base_weights_and_leaves_them(
    tiny_loaded, tiny_engine, counterfact_file
):
    loaded = tiny_loaded()
    before = {name: t.clone() for name, t in loaded.model.state_dict().items()}
    engine = tiny_engine(loaded)
    cases = load_cases("counterfact", counterfact_file)
    suite = prepare_suite(loaded, "counterfact", cases[:4], neighbours_per_fact=1)
    canaries = pick_canaries(loaded, [case.request for case in cases[4:]])
    yardstick = Yardstick.prepare(loaded, suite, canaries, FLUENCY)
    seen = []

    def count(run):
        seen.append([(name, len(method.checkpoints)) for name, method in run.methods.items()])

    # The same method twice: the second gives the same scores only if it starts where
    # the first started.
    methods = {"memit": engine.settings, "again": engine.settings}
    run = run_lifelong(
        loaded, yardstick, methods, statistics=engine.statistics, contexts=engine.contexts,
        batch_size=2, checkpoint_every=2,
        on_checkpoint=count,
    )
    for name, tensor in loaded.model.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    assert seen == [[("memit", 1)], [("memit", 2)], [("memit", 2), ("again", 1)],
                    [("memit", 2), ("again", 2)]]
    assert run.n == 4 and run.batch == 2 and run.dataset == "counterfact"
    unedited = run.unedited.values
    assert unedited["perplexity_ratio"] == 1.0
    assert unedited["held_out_perplexity_ratio"] is None  # no held-out texts given
    assert unedited["norm_growth_max"] == unedited["norm_growth_mean"] == 0.0
    assert unedited["canary"] == (1.0 if canaries else None)
    first, second = run.methods["memit"], run.methods["again"]
    assert [c.facts for c in first.checkpoints] == [2, 4]
    for mine, theirs in zip(first.checkpoints, second.checkpoints, strict=True):
        for metric in set(METRICS) - {"seconds_per_fact"}:
            assert mine.values[metric] == pytest.approx(theirs.values[metric]), metric
    final = first.final.values
    assert final["norm_growth_max"] >= final["norm_growth_mean"] > 0
    assert final["perplexity_ratio"] != 1.0 and final["seconds_per_fact"] > 0
    assert final["efficacy_success"] > unedited["efficacy_success"]
    for metric, interval in first.final.intervals.items():
        assert interval.low <= final[metric] <= interval.high, metric


def test_refusing_canary_losses_leaves_unedited_exactly_the_facts_that_lose_one(
    tiny_loaded, tiny_engine, counterfact_file, caplog
):
    loaded = tiny_loaded()
    engine = tiny_engine(loaded)
    cases = load_cases("counterfact", counterfact_file)[:4]
    suite = prepare_suite(loaded, "counterfact", cases, neighbours_per_fact=1)
    # The edited records themselves as canaries: an edit that takes loses its own.
    canaries = pick_canaries(loaded, [case.request for case in cases])
    places = {i + 1 for i, case in enumerate(cases) if case.request in canaries}
    yardstick = Yardstick.prepare(loaded, suite, canaries, FLUENCY)
    methods = {"memit": engine.settings}

    def stream(refuse: bool):
        return run_lifelong(loaded, yardstick, methods, statistics=engine.statistics,
                            contexts=engine.contexts, batch_size=2, checkpoint_every=4,
                            refuse_canary_loss=refuse).methods["memit"]

    applied = stream(False)
    with caplog.at_level(logging.INFO, logger="factsync.bench.lifelong"):
        gated = stream(True)
    assert applied.refused == []
    assert applied.final.values["canary"] < 1.0  # some edit took
    assert gated.final.values["canary"] == 1.0
    assert gated.refused and set(gated.refused) <= places
    lost = round((1.0 - applied.final.values["canary"]) * len(canaries))
    assert len(gated.refused) == lost  # here each edit that took lost its own canary
    for place in gated.refused:  # the log names the fact and the canary it would lose
        own = cases[place - 1].request
        assert (f"refused record #{place} ({own.prompt}): its edit loses the canary "
                f"{own.prompt} {own.old_object}") in caplog.text
    assert gated.final.values["efficacy_success"] < applied.final.values["efficacy_success"]
    report = to_json(LifelongRun("counterfact", 4, 2, applied.final, {"memit": gated}))
    assert report["methods"]["memit"]["refused"] == gated.refused
    assert from_json(report).methods["memit"].refused == gated.refused
    assert format_interventions(from_json(report)).startswith(
        f"memit refused {len(gated.refused)} of 4 facts")


def _command_inputs(tiny_loaded, tmp_path, monkeypatch):
    """A saved tiny model and a fluency file for the command, with a fresh data home."""
    model_dir = tmp_path / "model"
    loaded = tiny_loaded()
    loaded.model.save_pretrained(model_dir)
    loaded.tokenizer.save_pretrained(model_dir)
    fluency = tmp_path / "fluency.json"
    fluency.write_text(json.dumps([{"Corpus": "test", "Text": t} for t in FLUENCY]))
    monkeypatch.setenv("FACTSYNC_HOME", str(tmp_path / "home"))
    return model_dir, fluency


def test_the_command_writes_checkpoints_intervals_aliases_and_a_plot(
    tiny_loaded, tmp_path, monkeypatch, capsys, counterfact_file
):
    model_dir, fluency = _command_inputs(tiny_loaded, tmp_path, monkeypatch)
    held_out = tmp_path / "held-out.json"
    held_out.write_text(json.dumps([{"Text": f"{t} {t.lower()}"} for t in FLUENCY]))
    report, plot = tmp_path / "lifelong.json", tmp_path / "lifelong.png"
    code = main([
        "bench", "lifelong", "--data", str(counterfact_file), "--fluency", str(fluency),
        "--held-out-fluency", str(held_out),
        "--n", "6", "--batch", "2", "--checkpoint-every", "2", "--canaries", "4",
        "--methods", "memit,memit+ime", "--max-iterations", "2", "--neighbours", "1",
        "--model", str(model_dir), "--device", "cpu", "--corpus-tokens", "1000",
        "--change-back", "2", "--json", str(report), "--plot", str(plot),
    ])
    assert code == 0
    data = json.loads(report.read_text())
    assert (data["n"], data["batch"], data["dataset"]) == (6, 2, "counterfact")
    names = set(METRICS) | set(ALIASES)
    assert set(data["unedited"]) == names
    assert data["unedited"]["canary"] == 1.0
    assert data["unedited"]["held_out_perplexity_ratio"] == 1.0
    assert list(data["methods"]) == ["memit", "memit+ime"]
    for method in data["methods"].values():
        checkpoints = method["checkpoints"]
        assert [c["facts"] for c in checkpoints] == [2, 4, 6]
        assert set(method["final"]) == names
        assert method["final"] == {k: v for k, v in checkpoints[-1].items() if k != "facts"}
        assert {*RECORD_METRICS, "perplexity_ratio", "held_out_perplexity_ratio"} <= set(
            method["intervals"])
        assert method["final"]["held_out_perplexity_ratio"] != 1.0
        for values in [data["unedited"], method["final"], method["intervals"], *checkpoints]:
            for alias, name in ALIASES.items():
                assert values[alias] == values[name], alias
        for metric, (low, high) in method["intervals"].items():
            assert low <= method["final"][metric] <= high, metric
    assert plot.read_bytes().startswith(PNG_SIGNATURE)
    final, *by_checkpoint, memit_by_job, memit_ime_by_job, changed_back = (
        capsys.readouterr().out.strip().split("\n\n"))
    for block, (name, method) in zip([memit_by_job, memit_ime_by_job], data["methods"].items(),
                                     strict=True):
        assert [r["facts"] for r in method["job_fluency"]] == [2, 4, 6]
        assert block.startswith(f"{name}:\nNLL added to the fluency texts after 6 facts")
    table = final.splitlines()
    assert table[1].split(" | ")[0].strip() == "metric"
    assert {line.split(" | ")[0].strip() for line in table[3:]} == set(METRICS)
    assert [block.splitlines()[0] for block in by_checkpoint] == [
        "memit, by checkpoint:", "memit+ime, by checkpoint:"]
    for block, method in zip(by_checkpoint, data["methods"].values(), strict=True):
        header, _, *rows = block.splitlines()[1:]
        assert [c.strip() for c in header.split(" | ")] == ["facts", *SHORT_NAMES.values()]
        for row, checkpoint in zip(rows, method["checkpoints"], strict=True):
            cells = [c.strip() for c in row.split(" | ")]
            assert cells[0] == str(checkpoint["facts"])
            assert cells[1:] == [f"{checkpoint[m]:.3f}" for m in METRICS]
    title, header, _, *rows = changed_back.splitlines()
    assert title == "after changing back the first facts:"
    assert [c.strip() for c in header.split(" | ")] == [
        "metric", "memit: the 2 changed back", "memit: the rest",
        "memit+ime: the 2 changed back", "memit+ime: the rest"]
    assert [row.split(" | ")[0].strip() for row in rows] == list(METRICS)
    for method in data["methods"].values():
        numbers = method["changed_back"]
        assert numbers["facts"] == 2
        assert numbers["changed"]["seconds_per_fact"] > 0
        assert numbers["changed"]["perplexity_ratio"] is None
        assert numbers["rest"]["perplexity_ratio"] > 0
        assert set(RECORD_METRICS) <= set(numbers["changed_intervals"])


def _operator_corpus(tmp_path: Path) -> Path:
    """A text file of the operator's own, for the key statistics."""
    corpus = tmp_path / "corpus.txt"
    paragraphs = [f"Paragraph {i} of the operator's own text, about the river number {i} "
                  f"and its {i * 3} bridges." for i in range(80)]
    corpus.write_text("\n\n".join(paragraphs))
    return corpus


def test_each_natural_rule_method_gets_the_sensitivity_of_its_own_last_layer(
        tiny_loaded, tmp_path, monkeypatch, counterfact_file):
    model_dir, fluency = _command_inputs(tiny_loaded, tmp_path, monkeypatch)
    corpus = _operator_corpus(tmp_path)
    policies = []
    for layer in (1, 2):
        policy = tmp_path / f"natural-{layer}.yaml"
        policy.write_text(f"editing:\n  layers: [{layer}]\n"
                          "  target: {step_rule: natural, learning_rate: 0.1}\n")
        policies.append(policy)
    report = tmp_path / "lifelong.json"
    code = main([
        "bench", "lifelong", "--data", str(counterfact_file), "--fluency", str(fluency),
        "--n", "4", "--batch", "2", "--checkpoint-every", "4", "--canaries", "0",
        "--methods", f"memit,{policies[0]},{policies[1]}", "--neighbours", "0",
        "--model", str(model_dir), "--device", "cpu", "--corpus-tokens", "1000",
        "--corpus-files", str(corpus), "--json", str(report),
    ])
    assert code == 0
    digest = corpus_digest(load_text_files([corpus]))
    computed = {path.name.split("-")[1] for path in
                (tmp_path / "home" / "stats").glob(f"*/sensitivity-layer*-{digest}-*.safetensors")}
    assert computed == {"layer1", "layer2"}  # not only the last layer of all the methods
    methods = json.loads(report.read_text())["methods"]
    assert all(methods[str(p)]["final"]["norm_growth_max"] > 0 for p in policies)


def test_a_later_run_of_the_same_records_reuses_their_preparation(
        tiny_loaded, tmp_path, monkeypatch, capsys, counterfact_file):
    model_dir, fluency = _command_inputs(tiny_loaded, tmp_path, monkeypatch)
    prepared = tmp_path / "home" / "bench" / "prepared"

    def run(methods: str, report: Path, *extra: str) -> dict:
        code = main([
            "bench", "lifelong", "--data", str(counterfact_file), "--fluency", str(fluency),
            "--n", "4", "--batch", "2", "--checkpoint-every", "4", "--canaries", "2",
            "--methods", methods, "--neighbours", "1", "--model", str(model_dir),
            "--device", "cpu", "--corpus-tokens", "1000", "--json", str(report), *extra,
        ])
        assert code == 0
        return json.loads(report.read_text())

    first = run("memit", tmp_path / "first.json")
    assert len(list(prepared.glob("*.json"))) == 1
    capsys.readouterr()
    second = run("memit+ime", tmp_path / "second.json")
    assert "reusing the records prepared on the unedited model" in capsys.readouterr().err
    assert second["unedited"] == first["unedited"]
    assert list(second["methods"]) == ["memit+ime"]
    # Contrast neighbours change what is prepared: the records are prepared again.
    run("memit", tmp_path / "third.json", "--contrast", "2")
    assert "reusing the records prepared" not in capsys.readouterr().err
    assert len(list(prepared.glob("*.json"))) == 2


def test_skipping_records_runs_the_stream_of_the_records_after_them(
        tiny_loaded, tmp_path, monkeypatch, counterfact_file):
    model_dir, fluency = _command_inputs(tiny_loaded, tmp_path, monkeypatch)
    later = tmp_path / "later.json"
    later.write_text(json.dumps(json.loads(counterfact_file.read_text())[2:]))

    def run(data: Path, skip: int, name: str) -> tuple[dict, dict]:
        report, state = tmp_path / f"{name}.json", tmp_path / f"{name}-state"
        code = main([
            "bench", "lifelong", "--data", str(data), "--skip", str(skip),
            "--fluency", str(fluency), "--n", "2", "--batch", "2", "--checkpoint-every", "2",
            "--canaries", "2", "--methods", "memit", "--neighbours", "1",
            "--model", str(model_dir), "--device", "cpu", "--corpus-tokens", "1000",
            "--json", str(report), "--state", str(state),
        ])
        assert code == 0
        return (json.loads(report.read_text()),
                json.loads((state / INDEX).read_text())["arguments"])

    skipped, skipped_arguments = run(counterfact_file, 2, "skipped")
    sliced, sliced_arguments = run(later, 0, "sliced")
    assert skipped["unedited"] == sliced["unedited"]
    measured = {k: v for k, v in sliced["methods"]["memit"]["final"].items()
                if k != "seconds_per_fact"}
    assert measured.items() <= skipped["methods"]["memit"]["final"].items()
    # Runs saved before --skip existed name no skip, and must still be continued.
    assert skipped_arguments["skip"] == 2 and "skip" not in sliced_arguments


def test_the_canaries_of_a_saved_run_are_read_at_every_saved_delta(
        tiny_loaded, tmp_path, monkeypatch, capsys, counterfact_file):
    model_dir, fluency = _command_inputs(tiny_loaded, tmp_path, monkeypatch)
    state, report = tmp_path / "state", tmp_path / "canaries.json"
    assert main([
        "bench", "lifelong", "--data", str(counterfact_file), "--fluency", str(fluency),
        "--n", "6", "--batch", "2", "--checkpoint-every", "6", "--canaries", "0",
        "--methods", "memit", "--neighbours", "1", "--model", str(model_dir),
        "--device", "cpu", "--corpus-tokens", "1000", "--state", str(state),
        "--keep-every", "4",
    ]) == 0
    capsys.readouterr()
    assert main(["bench", "lifelong-canaries", str(state), "--model", str(model_dir),
                 "--device", "cpu", "--json", str(report)]) == 0
    title, header, *_ = capsys.readouterr().out.splitlines()
    assert title.startswith("memit, mean NLL of each canary's object by facts applied")
    assert [cell.strip() for cell in header.split(" | ")] == ["canary", "0", "4", "6"]
    assert [r["facts"] for r in json.loads(report.read_text())["methods"]["memit"]] == [0, 4, 6]
    assert main(["bench", "lifelong-canaries", str(state), "--method", "nope",
                 "--model", str(model_dir)]) == 1
    assert "has no method 'nope'; it has memit" in capsys.readouterr().err
    # The tiny random model states no well-known fact; the real one's are read in
    # test_canary_repair.py.
    assert main(["bench", "lifelong-canaries", str(state), "--well-known", "--model",
                 str(model_dir), "--device", "cpu", "--json", str(report)]) == 0
    assert json.loads(report.read_text())["canaries"] == []


def test_more_records_than_the_file_holds_are_refused(
        tiny_loaded, tmp_path, monkeypatch, capsys, counterfact_file):
    model_dir, fluency = _command_inputs(tiny_loaded, tmp_path, monkeypatch)
    held = len(json.loads(counterfact_file.read_text()))
    code = main(["bench", "lifelong", "--data", str(counterfact_file), "--skip", "2",
                 "--n", str(held - 1), "--batch", "1", "--fluency", str(fluency),
                 "--model", str(model_dir)])
    assert code == 1
    assert (f"holds {held} records; --skip 2 and --n {held - 1} ask for {held + 1}"
            in capsys.readouterr().err)


def test_a_negative_number_of_facts_to_check_for_wear_is_refused(
        tiny_loaded, tmp_path, monkeypatch, capsys, counterfact_file):
    model_dir, fluency = _command_inputs(tiny_loaded, tmp_path, monkeypatch)
    code = main(["bench", "lifelong", "--data", str(counterfact_file), "--n", "2",
                 "--fluency", str(fluency), "--model", str(model_dir), "--refresh-worn", "-1"])
    assert code == 1
    assert "--refresh-worn must not be negative, got -1" in capsys.readouterr().err


def test_the_command_runs_zsre_records(tiny_loaded, tmp_path, monkeypatch, capsys, zsre_file):
    model_dir, fluency = _command_inputs(tiny_loaded, tmp_path, monkeypatch)
    report, plot = tmp_path / "lifelong.json", tmp_path / "lifelong.png"
    corpus = _operator_corpus(tmp_path)
    code = main([
        "bench", "lifelong", "--dataset", "zsre", "--data", str(zsre_file),
        "--fluency", str(fluency), "--n", "4", "--batch", "2", "--checkpoint-every", "4",
        "--canaries", "4", "--methods", "memit", "--neighbours", "0",
        "--model", str(model_dir), "--device", "cpu", "--corpus-tokens", "1000",
        "--corpus-files", str(corpus), "--state", str(tmp_path / "state"),
        "--json", str(report), "--plot", str(plot),
    ])
    assert code == 0
    # The key statistics were computed over the given text, not over sampled text.
    digest = corpus_digest(load_text_files([corpus]))
    assert list((tmp_path / "home" / "stats").glob(f"*/layer*-{digest}-1000-*.safetensors"))
    assert not (tmp_path / "home" / "corpus").exists()
    assert plot.read_bytes().startswith(PNG_SIGNATURE)
    data = json.loads(report.read_text())
    assert (data["n"], data["batch"], data["dataset"]) == (4, 2, "zsre")
    assert [c["facts"] for c in data["methods"]["memit"]["checkpoints"]] == [4]
    final = data["methods"]["memit"]["final"]
    # Every record shares one neighbour prompt; with none used for editing it is scored.
    assert 0.0 <= final["neighbourhood_accuracy"] <= 1.0
    assert final["norm_growth_max"] > 0 and final["perplexity_ratio"] != 1.0
    # ZsRE has no neighbourhood success, these records leave no canaries, and no
    # held-out texts were given: the checkpoint table leaves out what was not measured.
    blocks = capsys.readouterr().out.strip().split("\n\n")
    by_checkpoint = next(b for b in blocks if b.startswith("memit, by checkpoint:"))
    header = by_checkpoint.splitlines()[1]
    assert [c.strip() for c in header.split(" | ")] == [
        "facts", *(SHORT_NAMES[m] for m in METRICS
                   if m not in {"neighbourhood_success", "canary", "held_out_perplexity_ratio"})]


def test_a_fact_changed_back_is_scored_against_its_old_object(tiny_loaded, counterfact_file):
    loaded = tiny_loaded()
    suite = prepare_suite(loaded, "counterfact", load_cases("counterfact", counterfact_file)[:4],
                          neighbours_per_fact=1)
    as_edited, changed_back = suite.score(loaded, [0, 2]), suite.score_changed_back(loaded, [0, 2])
    for metric in ("efficacy_success", "paraphrase_success"):  # the two objects swapped
        assert changed_back[metric] == [1.0 - v for v in as_edited[metric]], metric
    for metric in ("neighbourhood_success", "neighbourhood_accuracy"):
        assert changed_back[metric] == as_edited[metric], metric
    request = suite.requests[0]
    assert request.reverted().new_object == request.old_object
    assert request.reverted().reverted() == request
    with pytest.raises(ValueError, match="no old object to go back to"):
        replace(request, old_object=None).reverted()


def test_facts_changed_back_after_the_stream_are_measured_apart_from_the_rest(
    tiny_loaded, tiny_engine, counterfact_file
):
    loaded = tiny_loaded()
    before = {name: t.clone() for name, t in loaded.model.state_dict().items()}
    engine = tiny_engine(loaded)
    suite = prepare_suite(loaded, "counterfact", load_cases("counterfact", counterfact_file)[:4],
                          neighbours_per_fact=1)
    yardstick = Yardstick.prepare(loaded, suite, [], FLUENCY)
    unedited = suite.score(loaded, [0, 1])
    options = {"statistics": engine.statistics, "contexts": engine.contexts,
               "batch_size": 2, "checkpoint_every": 4}
    run = run_lifelong(loaded, yardstick, {"memit": engine.settings}, change_back=2, **options)
    for name, tensor in loaded.model.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    back = run.methods["memit"].changed_back
    assert (back.changed.facts, back.rest.facts) == (2, 4)
    changed, rest = back.changed.values, back.rest.values
    # The unedited model preferred the old object of both records; it does so again.
    assert unedited["efficacy_success"] == [0.0, 0.0] and changed["efficacy_success"] == 1.0
    assert changed["seconds_per_fact"] > 0 and rest["seconds_per_fact"] is None
    assert changed["perplexity_ratio"] is None and rest["perplexity_ratio"] is not None
    assert run.methods["memit"].final.facts == 4
    with pytest.raises(ValueError, match="change_back must be between 0 and the 4 records"):
        run_lifelong(loaded, yardstick, {"memit": engine.settings}, change_back=5, **options)
    with pytest.raises(ValueError, match="cannot be combined with a saved run"):
        run_lifelong(loaded, yardstick, {"memit": engine.settings}, change_back=1,
                     store=object(), **options)
