"""``JobRunner`` on a tiny model and a real store: each way a job can end."""

from __future__ import annotations

import errno
import sqlite3

import pytest

from factsync.evaluation.heldout_text import FLUENCY_TEXTS
from factsync.facts.catalog import RelationCatalog
from factsync.facts.records import FactRecord
from factsync.jobs.canaries import CanaryFact
from factsync.jobs.live import LiveVersion
from factsync.jobs.model_state import ModelState
from factsync.jobs.outcomes import (
    JobInterrupted,
    OutcomeKind,
    RetryMeaning,
    retry_meaning,
)
from factsync.jobs.pipeline import JobRunner
from factsync.kpis.report import CANDIDATE_METRICS, Metric
from factsync.policies.schema import EditingPolicy, Gate, Policy
from factsync.registry.versions import VersionFiles
from factsync.store.store import StateStore

FACTS = [("France", "P36", "Rome"), ("Italy", "P36", "Paris")]
OPEN = Policy(editing=EditingPolicy(max_iterations=1, neighbours=False), gates=())
IMPOSSIBLE = Policy(editing=EditingPolicy(max_iterations=1, neighbours=False),
                    gates=(Gate("perplexity_ratio", max=0.0),), on_failure="reject")


@pytest.fixture
def setup(tmp_path, tiny_loaded, tiny_engine):
    """A factory of (runner, store, models) for a policy, with one job of ``FACTS``."""
    stores: list[StateStore] = []

    def make(policy: Policy, *, texts=FLUENCY_TEXTS[:2], stopping=lambda: False,  # noqa: ANN001, ANN202
             canaries=()):
        store = StateStore(tmp_path / "state.sqlite")
        stores.append(store)
        loaded = tiny_loaded()
        models = ModelState(loaded)
        engine = tiny_engine(loaded)
        live = LiveVersion(store=store, versions=VersionFiles(tmp_path / "versions"),
                           models=models, engine=engine)
        changes = [store.record_desired(record=FactRecord(s, r, o, "test", f"row {i}"),
                                        relation=r) for i, (s, r, o) in enumerate(FACTS)]
        store.create_job(change_ids=[c.id for c in changes], policy_digest=policy.digest)
        stages: list[str] = []
        runner = JobRunner(store=store, catalog=RelationCatalog.built_in(), policy=policy,
                           models=models, engine=engine, live=live, fluency_texts=texts,
                           base_perplexity=10.0, stopping=stopping,
                           on_stage=lambda stage, seconds: stages.append(stage),
                           canaries=canaries)
        return runner, store, models, stages

    yield make
    for store in stores:
        store.close()


def test_a_job_that_passes_its_gates_is_promoted(setup):
    runner, store, models, stages = setup(OPEN)
    outcome = runner.run(store.next_job())
    assert outcome.kind is OutcomeKind.PROMOTED, outcome.summary
    assert stages == ["preparing", "editing", "evaluating"]
    assert store.live_version().id == outcome.version.id
    assert sorted(c.subject for c in store.changes(state="applied")) == ["France", "Italy"]
    assert {f.state for f in outcome.facts} == {"applied"}
    assert models.digest() == models.digest(serving=True)
    stored = store.live_version().report
    assert stored == outcome.report.to_dict()
    assert set(stored["candidate"]) == {m.value for m in CANDIDATE_METRICS}
    assert [f["change_id"] for f in stored["facts"]] == [f.change_id for f in outcome.facts]


def test_a_job_that_fails_a_gate_is_rejected_and_the_model_is_left_alone(setup):
    runner, store, models, _ = setup(IMPOSSIBLE)
    before = models.digest()
    outcome = runner.run(store.next_job())
    assert outcome.kind is OutcomeKind.REJECTED
    assert "perplexity_ratio <= 0: measured" in outcome.summary
    assert [g.metric.value for g in outcome.blocking_gates] == ["perplexity_ratio"]
    assert store.live_version().id == "base" and models.digest() == before
    assert sorted(c.subject for c in store.changes(state="failed")) == ["France", "Italy"]
    assert store.job(job_id=outcome.job.id).state == "rejected"


@pytest.mark.parametrize(("spain", "measured"), [(False, None), (True, 0.0)])
def test_the_canaries_a_job_rewrites_are_left_out_of_its_canary_kpi(setup, spain, measured):
    p36 = RelationCatalog.built_in().resolve("P36")
    canaries = [CanaryFact(subject, p36.template, "Paris") for subject, _, _ in FACTS]
    if spain:  # a canary the job leaves alone; the tiny model states no capital
        canaries.append(CanaryFact("Spain", p36.template, "Madrid"))
    runner, store, _, _ = setup(OPEN, canaries=canaries)
    outcome = runner.run(store.next_job())
    assert outcome.kind is OutcomeKind.PROMOTED, outcome.summary
    assert outcome.report.live.get(Metric.CANARY) == measured
    assert outcome.report.candidate.get(Metric.CANARY) == measured


def test_an_error_fails_the_job_with_its_meaning_and_reverts_the_candidate(setup):
    runner, store, models, _ = setup(OPEN, texts=[])  # no fluency text: measuring fails
    before = models.digest()
    outcome = runner.run(store.next_job())
    assert outcome.kind is OutcomeKind.FAILED and outcome.meaning is RetryMeaning.PERMANENT
    assert "no texts to measure perplexity on" in outcome.summary
    assert {c.state for c in store.changes(job_id=outcome.job.id)} == {"failed"}
    assert models.digest() == before


def test_a_stop_request_leaves_the_job_for_a_restart(setup):
    runner, store, _, _ = setup(OPEN, stopping=lambda: True)
    job = store.next_job()
    with pytest.raises(JobInterrupted):
        runner.run(job)
    assert store.job(job_id=job.id).state == "queued"
    assert store.live_version().id == "base"


@pytest.mark.parametrize(("error", "meaning"), [
    (OSError(errno.ENOSPC, "No space left on device"), RetryMeaning.STORAGE),
    (sqlite3.OperationalError("database or disk is full"), RetryMeaning.STORAGE),
    (MemoryError(), RetryMeaning.TEMPORARY),
    (ValueError("relation P99 is not in the catalog"), RetryMeaning.PERMANENT),
])
def test_each_error_carries_its_retry_meaning(error, meaning):
    assert retry_meaning(error) is meaning
    assert meaning.facts_wait == (meaning is not RetryMeaning.PERMANENT)


def test_a_stop_request_during_the_edit_interrupts_it_between_steps(setup):
    asked = []

    def stopping() -> bool:
        asked.append(True)
        return len(asked) > 3  # a no for the stage checks before editing, then steps

    runner, store, models, stages = setup(OPEN, stopping=stopping)
    before = models.digest()
    job = store.next_job()
    with pytest.raises(JobInterrupted):
        runner.run(job)
    assert stages == ["preparing"]  # the edit never finished
    assert models.digest() == before
    assert store.live_version().id == "base"
