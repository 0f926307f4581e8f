"""Whole-model gates on the real default model: a job whose edit changes a fact that
must never change is refused before it is served, and its other facts go on; a gate the
live version fails already rejects a job once, without trying its facts again, and
pages the operators."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from factsync.daemon.alerts import Alerter
from factsync.daemon.metrics import Metrics
from factsync.daemon.worker import Worker
from factsync.editing.build import StatisticsSettings, build_engine
from factsync.evaluation.fluency import perplexity
from factsync.evaluation.heldout_text import FLUENCY_TEXTS
from factsync.facts.catalog import RelationCatalog
from factsync.facts.records import FactRecord
from factsync.jobs.canaries import CanaryFact
from factsync.jobs.live import LiveVersion
from factsync.jobs.model_state import ModelState
from factsync.jobs.outcomes import OutcomeKind
from factsync.jobs.pipeline import JobRunner
from factsync.jobs.preparation import states
from factsync.jobs.reconciler import Reconciler
from factsync.kpis.report import Metric
from factsync.models.loading import load_model
from factsync.policies.schema import EditingPolicy, Gate, Policy
from factsync.registry.versions import VersionFiles
from factsync.store.store import StateStore

pytestmark = pytest.mark.real_model

# Moving France's capital to Rome spills onto the first canary, another fact about
# France; nothing in the job reaches the second. The third is the job's own prompt: the
# job rewrites it, so it cannot count against the job.
CANARIES = [CanaryFact("France", "The largest city in {} is", "Paris"),
            CanaryFact("Germany", "The capital of {} is", "Berlin"),
            CanaryFact("France", "The capital of {} is", "Paris")]
FACTS = [("France", "P36", "Rome"), ("Danielle Darrieux", "P103", "English")]
CANARY_GATES = (Gate("efficacy_accuracy", min=1.0), Gate("canary", max_drop=0.0))


@pytest.fixture(scope="module")
def loaded():
    """The real default model, which states every canary."""
    model = load_model()
    assert states(model, [c.prompted for c in CANARIES]) == [True, True, True]
    return model


@pytest.fixture
def job_of_both(tmp_path, loaded):
    """A factory of (runner, store, models) for a policy judging a job of ``FACTS``
    with ``gates`` (by default the canary gate), on the real model."""
    stores: list[StateStore] = []

    def make(*, repair_canaries: bool, gates: tuple[Gate, ...] = CANARY_GATES,
             base_perplexity: float = 10.0):  # noqa: ANN202
        editing = EditingPolicy(max_iterations=2, neighbours=False)
        policy = Policy(editing=editing, gates=gates, repair_canaries=repair_canaries)
        engine = build_engine(loaded, editing.engine_settings(),
                              StatisticsSettings(corpus_tokens=20_000))
        models = ModelState(loaded)
        store = StateStore(tmp_path / "state.sqlite")
        stores.append(store)
        changes = [store.record_desired(record=FactRecord(s, r, o, "test", str(i)), relation=r)
                   for i, (s, r, o) in enumerate(FACTS)]
        store.create_job(change_ids=[c.id for c in changes], policy_digest=policy.digest)
        live = LiveVersion(store=store, versions=VersionFiles(tmp_path / "versions"),
                           models=models, engine=engine)
        runner = JobRunner(store=store, catalog=RelationCatalog.built_in(), policy=policy,
                           models=models, engine=engine, live=live,
                           fluency_texts=FLUENCY_TEXTS[:2], base_perplexity=base_perplexity,
                           canaries=CANARIES)
        return runner, store, models

    yield make
    for store in stores:
        store.close()


def test_a_fact_that_changes_a_canary_is_refused_and_the_rest_of_its_job_applied(job_of_both):
    runner, store, models = job_of_both(repair_canaries=False)
    try:
        both = runner.run(store.next_job())
        assert both.kind is OutcomeKind.REJECTED, both.summary
        assert all(f.took for f in both.report.facts)
        assert [g.metric for g in both.blocking_gates] == [Metric.CANARY]
        assert both.report.live.get(Metric.CANARY) == 1.0
        assert both.report.candidate.get(Metric.CANARY) == 0.5  # the spill
        # Every edit took, so the job goes again in halves, one fact each here.
        assert [[c.subject for c in store.changes(job_id=j.id)] for j in both.retry_jobs] == [
            ["France"], ["Danielle Darrieux"]]

        france = runner.run(store.next_job())
        assert france.kind is OutcomeKind.REJECTED, france.summary
        assert "canary at most 0 below live: measured 0.5 (live 1)" in france.summary
        assert france.retry_jobs == [] and [f.state for f in france.facts] == ["failed"]
        darrieux = runner.run(store.next_job())
        assert darrieux.kind is OutcomeKind.PROMOTED, darrieux.summary
        assert darrieux.report.candidate.get(Metric.CANARY) == 1.0
        assert [c.subject for c in store.changes(state="applied")] == ["Danielle Darrieux"]
        assert store.next_job() is None
    finally:
        models.rebuild([], version_id="base")  # the next test starts from the base model


def test_a_job_that_loses_a_canary_states_it_again_and_is_promoted_whole(job_of_both):
    runner, store, models = job_of_both(repair_canaries=True)
    try:
        outcome = runner.run(store.next_job())
        assert outcome.kind is OutcomeKind.PROMOTED, outcome.summary
        assert outcome.summary.endswith(
            "stating again the canaries it lost: The largest city in France is Paris")
        assert outcome.report.candidate.get(Metric.CANARY) == 1.0
        assert all(f.took for f in outcome.report.facts)
        assert sorted(c.subject for c in store.changes(state="applied")) == [
            "Danielle Darrieux", "France"]
        # Both what the job wrote and the canary it stated again are what is served.
        assert states(models.work, [("The capital of France is", "Rome"),
                                    CANARIES[0].prompted]) == [True, True]
        editing = [e.reason for e in store.job_events(job_id=outcome.job.id)
                   if e.state == "editing"]
        assert editing[-1] == "stating lost canaries again: The largest city in France is Paris"
    finally:
        models.rebuild([], version_id="base")  # the next test starts from the base model


def test_a_gate_the_live_version_fails_already_rejects_each_job_once_and_pages(
    job_of_both, loaded
):
    # The live version (the base model here) reads 1.10 against the base perplexity,
    # past the gate's 1.05: the state of a long stream whose edits have spent the
    # fluency the gate allows. Halves of the job cannot pass either.
    gates = (Gate("efficacy_accuracy", min=1.0), Gate("perplexity_ratio", max=1.05))
    base = perplexity(loaded, FLUENCY_TEXTS[:2]) / 1.10
    runner, store, models = job_of_both(repair_canaries=False, gates=gates,
                                        base_perplexity=base)
    metrics = Metrics(CollectorRegistry())
    alerter = Alerter([], metrics)
    # The daemon's worker runs the job and turns its outcome into alerts; it plans no
    # job here, so its reconciler's policy does not matter.
    catalog = RelationCatalog.built_in()
    worker = Worker(store=store, catalog=catalog,
                    reconciler=Reconciler(store=store, catalog=catalog, policy=Policy()),
                    runner=runner, models=models, metrics=metrics, alerter=alerter)
    try:
        job = store.next_job()
        worker.run_job(job)
        assert [j.id for j in store.jobs(state="rejected")] == [job.id]
        [alert] = alerter.active()
        assert (alert.name, alert.severity) == ("FactsyncJobRejected", "critical")
        assert ("the live version fails perplexity_ratio <= 1.05 already, so no edit can "
                "pass until the gate is relaxed or the live version rolled back"
                in alert.summary)
        [gate] = alert.details["gates"]
        assert gate["gate"] == "perplexity_ratio <= 1.05"
        assert gate["live"] == pytest.approx(1.10)
        assert store.next_job() is None  # no halves to try
        changes = store.changes(job_id=job.id)
        assert [(c.state, c.reason) for c in changes] == [("failed", alert.summary)] * len(FACTS)
        assert store.changes(state="applied") == []
        assert metrics.registry.get_sample_value(
            "factsync_gate_failures_total", {"metric": "perplexity_ratio"}) == 1
    finally:
        models.rebuild([], version_id="base")  # the next test starts from the base model
