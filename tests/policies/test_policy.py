"""Policy files: loading, errors that name the key, and judging KPI reports."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from factsync.cli import build_parser
from factsync.commands.options import engine_settings
from factsync.commands.policy import explain
from factsync.editing.engine import EngineSettings
from factsync.editing.outcomes import TookRule
from factsync.editing.spread import LeadHold, SpreadSettings
from factsync.editing.targets import StepRule, TargetSettings
from factsync.kpis.report import KpiReport, KpiValues, Metric
from factsync.models.specs import spec_for
from factsync.policies.judge import beyond_reach, judge
from factsync.policies.schema import Gate, Policy, RelationPolicy, load_policy
from factsync.typed_yaml import SchemaError

SHIPPED = Path(__file__).resolve().parents[2] / "policies"
BENCH = Path(__file__).resolve().parents[2] / "bench" / "policies"


def write(tmp_path, document) -> Path:  # noqa: ANN001
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(document) if not isinstance(document, str) else document)
    return path


def test_the_shipped_default_file_is_the_built_in_default():
    assert load_policy(SHIPPED / "default.yaml") == Policy()


def test_every_shipped_policy_loads():
    for path in SHIPPED.glob("*.yaml"):
        assert load_policy(path).name == path.stem


def test_every_bench_policy_loads_so_the_commands_recorded_with_it_still_run():
    paths = sorted(BENCH.rglob("*.yaml"))
    assert len(paths) > 20
    for path in paths:
        assert load_policy(path).name == path.stem


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"batch": {"max_fact": 3}}, r"policy.yaml.batch: unknown key\(s\) max_fact"),
        ({"batch": {"max_facts": "ten"}}, r"policy.yaml.batch.max_facts: expected int, got str"),
        ({"batch": {"max_facts": 0}}, r"policy.yaml.batch: max_facts must be at least 1, got 0"),
        ({"editing": {"algorithm": "rome"}},
         r"editing.algorithm must be one of memit, alphaedit, got 'rome'"),
        ({"gates": [{"metric": "speed", "min": 1}]},
         r"gates\[0\]: metric must be one of .* got 'speed'"),
        ({"gates": [{"metric": "retention"}]}, r"gates\[0\]: gate on retention needs min"),
        ({"gates": {"metric": "retention"}}, r"gates: expected a list"),
        ({"on_failure": "panic"}, r"on_failure must be one of reject, retry_passing"),
        ({"relations": {"P36": {"gates": [{"metric": "retention", "min": 1}]}}},
         r"relations.P36: relation gates judge per-fact metrics"),
        ("gates: [", r"not valid YAML"),
    ],
)
def test_a_wrong_value_is_reported_with_its_key(tmp_path, document, message):
    with pytest.raises(SchemaError, match=message):
        load_policy(write(tmp_path, document))


def test_a_missing_policy_file_is_named(tmp_path):
    with pytest.raises(SchemaError, match="no such file"):
        load_policy(tmp_path / "absent.yaml")


def values(named: dict) -> KpiValues:
    return KpiValues.from_dict(named)


def report(candidate, live=None, by_relation=None) -> KpiReport:  # noqa: ANN001
    relations = {r: (values(k["candidate"]), values(k["live"]))
                 for r, k in (by_relation or {}).items()}
    return KpiReport(candidate=values(candidate), live=values(live or {}),
                     by_relation=relations, facts=())


def test_absolute_relative_and_dry_run_gates():
    policy = Policy(gates=(
        Gate("retention", min=0.9),
        Gate("retention", max_drop=0.05),
        Gate("perplexity_ratio", max=1.05, dry_run=True),
    ))
    results = judge(policy, report({"retention": 0.92, "perplexity_ratio": 1.2},
                                   live={"retention": 1.0}))
    assert [(r.gate, r.passed, r.blocking) for r in results] == [
        ("retention >= 0.9", True, False),
        ("retention at most 0.05 below live", False, True),
        ("perplexity_ratio <= 1.05 (dry run)", False, False),
    ]


def test_only_failed_bounds_the_live_version_breaks_too_are_beyond_reach():
    policy = Policy(gates=(
        Gate("perplexity_ratio", max=1.05),
        Gate("retention", min=0.9),
        Gate("canary", max_drop=0.0),
        Gate("perplexity_ratio", max=1.02, dry_run=True),
        Gate("efficacy_accuracy", min=1.0),
    ))
    # The live version is past the perplexity bound and the dry-run one, within the
    # retention bound; the canary gate compares with the live version, so the live
    # version cannot fail it; the job's own efficacy is not the live version's.
    measured = report({"perplexity_ratio": 1.07, "retention": 0.85, "canary": 0.9},
                      live={"perplexity_ratio": 1.06, "retention": 0.95, "canary": 1.0},
                      by_relation={"P36": {"candidate": {"efficacy_accuracy": 0.5},
                                           "live": {"efficacy_accuracy": 0.0}}})
    judged = replace(measured, gates=tuple(judge(policy, measured)))
    assert [r.gate for r in judged.gates if r.blocking] == [
        "perplexity_ratio <= 1.05", "retention >= 0.9", "canary at most 0 below live",
        "efficacy_accuracy >= 1"]
    assert [r.gate for r in beyond_reach(policy, judged)] == ["perplexity_ratio <= 1.05"]

    within = report({"perplexity_ratio": 1.07}, live={"perplexity_ratio": 1.04})
    assert beyond_reach(policy, replace(within, gates=tuple(judge(policy, within)))) == []


def test_a_gate_with_nothing_to_measure_passes():
    results = judge(Policy(gates=(Gate("retention", min=0.9),)), report({"retention": None}))
    assert results[0].passed and results[0].value is None


def test_relation_gates_replace_the_same_metric_for_that_relations_facts():
    policy = Policy(
        gates=(Gate("paraphrase_success", min=0.9), Gate("efficacy_accuracy", min=1.0)),
        relations={"P106": RelationPolicy(gates=(Gate("paraphrase_success", min=0.4),))},
    )
    kpis = {"candidate": {"paraphrase_success": 0.5, "efficacy_accuracy": 1.0}, "live": {}}
    results = judge(policy, report({}, by_relation={"P106": kpis, "P36": kpis}))
    by = {(r.relation, r.gate): r.passed for r in results}
    assert by == {
        ("P106", "efficacy_accuracy >= 1"): True,
        ("P106", "paraphrase_success >= 0.4"): True,
        ("P36", "paraphrase_success >= 0.9"): False,
        ("P36", "efficacy_accuracy >= 1"): True,
    }


def test_the_metric_names_of_the_first_release_still_load(tmp_path):
    old = write(tmp_path, {"gates": [{"metric": "edit_success", "min": 1.0},
                                     {"metric": "neighbourhood_preservation", "min": 0.75}]})
    gates = load_policy(old).gates
    assert [g.metric for g in gates] == [Metric.EFFICACY_ACCURACY, Metric.NEIGHBOURHOOD_ACCURACY]
    stored = {"candidate": {"edit_success": 1.0, "neighbourhood_preservation": 0.5}}
    assert KpiReport.candidate_values(stored).to_dict() == {
        "efficacy_accuracy": 1.0, "neighbourhood_accuracy": 0.5}


def test_the_digest_changes_with_the_content():
    assert Policy().digest == Policy().digest
    assert Policy().digest != Policy(on_failure="reject").digest


def test_the_command_line_defaults_to_the_engine_and_the_policy_only_where_it_chose_to():
    args = build_parser().parse_args(["edit", "--subject", "France", "--template",
                                      "The capital of {} is", "--new", "Rome"])
    assert engine_settings(args, neighbours=EngineSettings.neighbours) == EngineSettings()
    chosen = Policy().editing.engine_settings()
    assert chosen.took_rule is TookRule.MOST_PROBABLE
    assert chosen.target.step_rule is StepRule.NATURAL and chosen.target.train_phrasings
    assert chosen.spread.hold_lead is LeadHold.WHERE_CHEAP
    assert replace(chosen, took_rule=EngineSettings.took_rule, target=TargetSettings(),
                   spread=replace(chosen.spread, hold_lead=LeadHold.NEVER)) == EngineSettings()


def test_the_shipped_policy_edits_as_its_bench_policy_for_the_1000_fact_stream():
    measured = load_policy(
        BENCH / "mpes-natural-phrasings-dealt-layers2-6-most-probable-hold-lead-where-cheap.yaml")
    assert replace(measured.editing, layers=None) == Policy().editing
    assert spec_for("llama").default_layers(30, 576) == list(measured.editing.layers)  # SmolLM2


def test_a_policy_changes_only_the_target_keys_it_names(tmp_path):
    policy = load_policy(write(tmp_path, {"editing": {"target": {"steps": 30}}}))
    assert policy.editing.target == replace(Policy().editing.target, steps=30)


def test_every_engine_knob_is_reachable_from_the_policy(tmp_path):
    editing = {"algorithm": "alphaedit", "max_iterations": 5, "neighbours": False,
               "update_fraction": 0.4, "layers": [1, 2], "preserve_applied": False,
               "mom2_update_weight": 900.0, "nullspace_threshold": 0.05,
               "second_moment_shrinkage": 0.2, "second_moment_shrinkage_target": "diagonal",
               "hold_lead": "every_layer", "took_rule": "most_probable",
               "took_phrasings": True, "keep_neighbours_held": True, "guard_facts": True,
               "target": {"steps": 7, "chunk_size": 4, "kl_factor": 0.1}}
    settings = load_policy(write(tmp_path, {"editing": editing})).editing.engine_settings()
    assert settings == EngineSettings(
        layers=(1, 2), max_iterations=5, neighbours=False,
        took_rule=TookRule.MOST_PROBABLE, took_phrasings=True, keep_neighbours_held=True,
        guard_facts=True,
        target=replace(Policy().editing.target, steps=7, chunk_size=4, kl_factor=0.1),
        spread=SpreadSettings(algorithm="alphaedit", update_fraction=0.4,
                              mom2_update_weight=900.0, nullspace_threshold=0.05,
                              preserve_applied=False, second_moment_shrinkage=0.2,
                              second_moment_shrinkage_target="diagonal",
                              hold_lead="every_layer"))
    joint = load_policy(write(tmp_path, {"editing": {"joint_layers": True}}))  # MEMIT only
    assert joint.editing.engine_settings().spread == SpreadSettings(joint_layers=True,
                                                                    hold_lead="where_cheap")


@pytest.mark.parametrize(("editing", "message"), [
    ({"target": {"steps": 0}}, r"policy.yaml.editing.target: steps must be at least 1, got 0"),
    ({"target": {"step": 3}}, r"policy.yaml.editing.target: unknown key\(s\) step"),
    ({"layers": [3, 2]}, r"policy.yaml.editing: layers must be distinct and increasing"),
    ({"update_fraction": 1.5}, r"policy.yaml.editing: update_fraction must be in \(0, 1\)"),
    ({"algorithm": "alphaedit", "joint_layers": True},
     r"policy.yaml.editing: joint_layers solves MEMIT's update"),
    ({"took_rule": "greedy"},
     r"policy.yaml.editing.took_rule must be one of wins, most_probable, "
     r"most_probable_bare, got 'greedy'"),
    ({"second_moment_shrinkage_target": "identity"},
     r"policy.yaml.editing.second_moment_shrinkage_target must be one of isotropic, "
     r"diagonal, got 'identity'"),
])
def test_a_wrong_engine_knob_is_reported_with_its_key(tmp_path, editing, message):
    with pytest.raises(SchemaError, match=message):
        load_policy(write(tmp_path, {"editing": editing}))


def test_policy_check_says_when_a_fact_leaves_ime(tmp_path):
    default = explain(load_policy(write(tmp_path, {})))
    assert ("- A fact leaves IME once its new object beats the old one and is the greedy "
            "answer on the bare prompt and every context prefix.") in default
    winning = explain(load_policy(write(tmp_path, {"editing": {"took_rule": "wins"}})))
    assert ("- A fact leaves IME once its new object beats the old one on the bare prompt "
            "and every context prefix.") in winning
    strict = explain(load_policy(write(tmp_path, {"editing": {"took_phrasings": True}})))
    assert ("- A fact leaves IME once its new object beats the old one and is the greedy "
            "answer on the bare prompt, every context prefix and every phrasing.") in strict
    bare = explain(load_policy(write(tmp_path, {"editing": {
        "took_rule": "most_probable_bare"}})))
    assert ("- A fact leaves IME once its new object beats the old one on the bare prompt "
            "and every context prefix, and is the greedy answer on the bare prompt.") in bare


def test_policy_check_says_whether_neighbours_stay_held(tmp_path):
    default = " ".join(explain(load_policy(write(tmp_path, {}))))
    kept = " ".join(explain(load_policy(write(tmp_path, {"editing": {
        "keep_neighbours_held": True}}))))
    assert "held in place in later jobs too" in kept
    assert "later jobs" not in default


def test_policy_check_says_whether_guard_facts_are_held(tmp_path):
    default = " ".join(explain(load_policy(write(tmp_path, {}))))
    guarded = " ".join(explain(load_policy(write(tmp_path, {"editing": {"guard_facts": True}}))))
    assert "holds the built-in guard facts the model states in place" in guarded
    assert "guard" not in default


def test_policy_check_says_where_the_start_token_is_held(tmp_path):
    def said(hold: str | None) -> str:
        editing = {} if hold is None else {"editing": {"hold_lead": hold}}
        return " ".join(explain(load_policy(write(tmp_path, editing))))

    cheap = "in place at the edit layers whose key statistics leave it cheaper"
    assert cheap in said(None)
    assert cheap in said("where_cheap")
    assert "start token" not in said("never")
    assert "start token's outputs in place at every edit layer" in said("every_layer")


def test_policy_check_says_whether_lost_canaries_are_stated_again(tmp_path):
    default = load_policy(write(tmp_path, {}))
    refusing = load_policy(write(tmp_path, {"repair_canaries": False}))
    assert default.repair_canaries and not refusing.repair_canaries
    assert refusing.digest != default.digest
    assert "stated again" in " ".join(explain(default))
    assert "stated again" not in " ".join(explain(refusing))
    with pytest.raises(SchemaError, match="repair_canaries"):
        load_policy(write(tmp_path, {"repair_canaries": "sometimes"}))


def test_policy_check_says_whether_worn_facts_are_edited_again(tmp_path):
    default = load_policy(write(tmp_path, {}))
    restating = load_policy(write(tmp_path, {"monitor": {"restate_worn": True}}))
    assert not default.monitor.restate_worn and restating.monitor.restate_worn
    assert restating.digest != default.digest
    line = "Applied facts a check finds no longer stated are queued to be edited again."
    assert line in " ".join(explain(restating))
    assert line not in " ".join(explain(default))
    with pytest.raises(SchemaError, match="restate_worn"):
        load_policy(write(tmp_path, {"monitor": {"restate_worn": "sometimes"}}))
