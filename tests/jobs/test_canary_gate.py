"""A policy gate on canaries, on the real default model: a job whose edit changes a fact
that must never change is refused before it is served."""

from __future__ import annotations

import pytest

from factsync.editing.build import StatisticsSettings, build_engine
from factsync.evaluation.heldout_text import FLUENCY_TEXTS
from factsync.facts.catalog import RelationCatalog
from factsync.facts.records import FactRecord
from factsync.jobs.live import LiveVersion
from factsync.jobs.model_state import ModelState
from factsync.jobs.outcomes import OutcomeKind
from factsync.jobs.pipeline import JobRunner
from factsync.jobs.preparation import states
from factsync.kpis.report import Metric
from factsync.models.loading import load_model
from factsync.policies.schema import EditingPolicy, Gate, Policy
from factsync.registry.versions import VersionFiles
from factsync.store.store import StateStore

pytestmark = pytest.mark.real_model

# The job moves France's capital to Rome. Its edit spills onto the first canary, another
# fact about France, and leaves the second alone. The third is the job's own prompt: the
# job rewrites it, so it cannot count against the job.
CANARIES = [("The largest city in France is", "Paris"), ("The capital of Germany is", "Berlin"),
            ("The capital of France is", "Paris")]


@pytest.mark.parametrize("gated", [True, False])
def test_a_job_that_changes_a_canary_is_refused_by_a_canary_gate(tmp_path, gated):
    loaded = load_model()
    assert states(loaded, CANARIES) == [True, True, True]  # the base model states them
    editing = EditingPolicy(max_iterations=1, neighbours=False)
    gates = (Gate("canary", max_drop=0.0),) if gated else ()
    policy = Policy(editing=editing, gates=gates, on_failure="reject")
    engine = build_engine(loaded, editing.engine_settings(),
                          StatisticsSettings(corpus_tokens=20_000))
    models = ModelState(loaded)
    store = StateStore(tmp_path / "state.sqlite")
    try:
        change = store.record_desired(record=FactRecord("France", "P36", "Rome", "test", "1"),
                                      relation="P36")
        store.create_job(change_ids=[change.id], policy_digest=policy.digest)
        live = LiveVersion(store=store, versions=VersionFiles(tmp_path / "versions"),
                           models=models, engine=engine)
        runner = JobRunner(store=store, catalog=RelationCatalog.built_in(), policy=policy,
                           models=models, engine=engine, live=live,
                           fluency_texts=FLUENCY_TEXTS[:2], base_perplexity=10.0,
                           canaries=CANARIES)
        before = models.digest()
        outcome = runner.run(store.next_job())

        report = outcome.report
        assert report.live.get(Metric.CANARY) == 1.0
        assert report.candidate.get(Metric.CANARY) == 0.5  # the spill
        if gated:
            assert outcome.kind is OutcomeKind.REJECTED, outcome.summary
            assert "canary at most 0 below live: measured 0.5 (live 1)" in outcome.summary
            assert store.live_version().id == "base" and models.digest() == before
        else:
            assert outcome.kind is OutcomeKind.PROMOTED, outcome.summary
    finally:
        store.close()
