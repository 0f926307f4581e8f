"""The Ray executor against a real Ray runtime on this machine: two worker processes,
each with its own copy of a tiny model read from disk.

The same facts through ``local`` and through ``ray`` give the same edit; a worker
killed or hung during a job costs a retry of its share, not a wrong result; a worker
on another version is brought up to date before it is used.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

import pytest
import torch

from factsync.editing.engine import EditEngine
from factsync.editing.requests import EditRequest, Neighbour
from factsync.evaluation.kpis import EditCheck, measure
from factsync.executors.chain import DeltaChain
from factsync.executors.local import FleetStatus
from factsync.executors.settings import ExecutorSettings, ExecutorType
from factsync.models.loading import load_model

ray = pytest.importorskip("ray")
from factsync.executors.ray_fleet import RayExecutor  # noqa: E402 (needs ray)

pytestmark = pytest.mark.ray

REQUESTS = [
    EditRequest("Danielle Darrieux", "The mother tongue of {} is", "Italy", "French",
                (Neighbour("Skype", "The mother tongue of {} is", "French"),)),
    EditRequest("LinkedIn", "{} is owned by", "Apple", "Microsoft"),
    EditRequest("Paris", "The capital of {} is", "Rome", "France"),
    EditRequest("Skype", "{} was developed by", "Google", "Microsoft"),
    EditRequest("Rome", "{} is the capital of", "Spain", "Italy"),
]
CHECKS = [EditCheck(change_id=i, relation="r", prompt=r.template.format(r.subject),
                    new_object=r.new_object, old_object=r.old_object,
                    paraphrases=(f"In short, {r.template.format(r.subject)}",),
                    held_out=(("The capital of Italy is", "Rome"),))
          for i, r in enumerate(REQUESTS)]
RETENTION = [("The capital of France is", "Paris"), ("LinkedIn is owned by", "Microsoft"),
             ("Skype is owned by", "Microsoft")]
TEXTS = ["The capital of France is Paris.", "Once upon a time there was a city.",
         "LinkedIn is owned by Microsoft."]
TOLERANCE = 1e-5
"""Relative to the largest entry: the workers run other thread counts, and a later IME
pass applies the earlier passes as one composed delta, so sums round differently."""


@pytest.fixture(scope="module")
def ray_runtime():
    """A real Ray instance on this machine for the module's tests."""
    ray.init(num_cpus=4, include_dashboard=False, logging_level=logging.WARNING)
    yield
    ray.shutdown()


@pytest.fixture
def setup(ray_runtime, tiny_model_dir, tiny_engine):
    """A local engine on the tiny model read back from disk, and a Ray executor factory
    whose workers read the same directory."""
    loaded = load_model(tiny_model_dir, device="cpu")
    local = tiny_engine(loaded, max_iterations=2, neighbours=True)
    executors = []

    def executor(**settings) -> RayExecutor:  # noqa: ANN003
        made = RayExecutor(str(tiny_model_dir), ExecutorSettings(
            type=ExecutorType.RAY, workers=2, cpus_per_worker=1, **settings), device="cpu")
        executors.append(made)
        return made

    yield loaded, local, executor
    for made in executors:
        made.close()


def ray_engine(local: EditEngine, executor: RayExecutor) -> EditEngine:
    return EditEngine(local.loaded, local.settings, local.statistics, local.contexts,
                      optimiser=executor.optimise)


def assert_same_delta(one, other) -> None:  # noqa: ANN001
    assert one.layers.keys() == other.layers.keys()
    for path, layer in one.layers.items():
        matrix = layer.matrix(one.layout)
        difference = (matrix - other.layers[path].matrix(other.layout)).abs().max()
        assert float(difference) <= TOLERANCE * float(matrix.abs().max()), path


def test_an_edit_through_ray_equals_the_local_edit_on_a_live_chain(setup, random_delta):
    loaded, local, executor = setup
    fleet = executor()
    earlier = random_delta(loaded, local.layers, scale=0.05)
    earlier.apply(loaded)
    fleet.follow([("v1", earlier)])

    expected = local.edit(REQUESTS)
    got = ray_engine(local, fleet).edit(REQUESTS)

    assert expected.iterations == got.iterations == 2  # pass 2 ran with pass 1 applied
    assert_same_delta(expected.delta, got.delta)
    assert [len(r) for r in expected.records] == [len(r) for r in got.records]
    assert fleet.status().workers == 2 and fleet.status().failures == 0


def test_workers_follow_a_chain_that_folded_and_edit_as_the_local_model_does(setup,
                                                                            random_delta):
    loaded, local, executor = setup
    fleet = executor()
    chain = DeltaChain()
    for n in range(12):
        delta = random_delta(loaded, local.layers, rank=8, scale=0.01, seed=n)
        delta.apply(loaded)
        chain.append(f"v{n}", delta)
        fleet.follow(chain.steps)
    assert chain.steps[0][0].startswith("up to"), "the chain folded"

    expected = local.edit(REQUESTS)
    got = ray_engine(local, fleet).edit(REQUESTS)

    assert_same_delta(expected.delta, got.delta)
    assert fleet.status().failures == 0


def test_scoring_through_ray_equals_local_scoring_with_a_candidate(setup, random_delta):
    loaded, local, executor = setup
    fleet = executor()
    candidate = random_delta(loaded, local.layers, scale=0.3, seed=4)
    with torch.no_grad():
        handle = candidate.apply(loaded)
        expected = measure(loaded, CHECKS, RETENTION, TEXTS)
        handle.revert()
    got = fleet.measure(loaded, CHECKS, RETENTION, TEXTS, applied=candidate)

    assert got.retention == expected.retention
    assert got.perplexity == pytest.approx(expected.perplexity, rel=1e-6)
    assert got.edit_probability == pytest.approx(expected.edit_probability, rel=1e-5)
    assert got.facts == expected.facts
    assert measure(loaded, CHECKS, RETENTION, TEXTS) != expected  # the candidate mattered


@pytest.mark.parametrize("fault", ["killed", "hung"])
def test_a_worker_lost_during_a_job_costs_a_retry_of_its_share(setup, fault, caplog):
    """The worker is stopped (SIGSTOP) before the job, so its share is certainly in
    flight when it is killed (SIGKILL) or when its time runs out."""
    caplog.set_level(logging.WARNING, logger="factsync.executors.ray_fleet")
    loaded, local, executor = setup
    fleet = executor(timeout_seconds=20 if fault == "hung" else 600)
    expected = local.edit(REQUESTS)
    victim = fleet.worker_pids()[0]
    os.kill(victim, signal.SIGSTOP)
    outcome = {}
    engine = ray_engine(local, fleet)
    job = threading.Thread(target=lambda: outcome.update(got=engine.edit(REQUESTS)))
    job.start()
    if fault == "killed":
        while fleet.status().busy < 2:
            time.sleep(0.05)
        os.kill(victim, signal.SIGKILL)
    job.join(timeout=300)

    assert not job.is_alive()
    assert_same_delta(expected.delta, outcome["got"].delta)
    # Under heavy load a healthy worker may miss the timeout too, and is dropped as well.
    assert fleet.status().failures >= 1, caplog.text
    assert ("died" if fault == "killed" else "no answer within 20s") in caplog.text
    ray_engine(local, fleet).edit(REQUESTS[:1])  # the next call replaces the lost worker
    assert fleet.status().workers == 2, caplog.text
    assert victim not in fleet.worker_pids()


def test_a_worker_on_another_version_is_brought_up_to_date_before_use(setup, random_delta,
                                                                      caplog):
    caplog.set_level(logging.WARNING, logger="factsync.executors.ray_fleet")
    loaded, local, executor = setup
    fleet = executor()
    live = random_delta(loaded, local.layers, scale=0.05)
    live.apply(loaded)
    fleet.follow([("v1", live)])
    stale = fleet._workers[0].handle  # noqa: SLF001 (the test skews one worker by hand)
    other = random_delta(loaded, local.layers, scale=0.05, seed=9)
    ray.get(stale.follow.remote(["v0"], [ray.put(other)]))

    expected = local.edit(REQUESTS)
    got = ray_engine(local, fleet).edit(REQUESTS)

    assert_same_delta(expected.delta, got.delta)
    assert "bringing it up to date" in caplog.text
    assert fleet.status().failures == 0
    assert ray.get(stale.key.remote()) == ray.get(fleet._workers[1].handle.key.remote())  # noqa: SLF001


def test_a_worker_that_cannot_follow_a_new_version_is_dropped_and_replaced(
        setup, random_delta, caplog):
    """A worker hung (SIGSTOP) when the live version moves cannot follow it: it is
    dropped rather than left on the old version, and the next job runs on a new one."""
    caplog.set_level(logging.WARNING, logger="factsync.executors.ray_fleet")
    loaded, local, executor = setup
    fleet = executor(timeout_seconds=10)
    victim = fleet.worker_pids()[0]
    os.kill(victim, signal.SIGSTOP)
    live = random_delta(loaded, local.layers, scale=0.05)
    live.apply(loaded)
    fleet.follow([("v1", live)])

    assert "could not follow the live version" in caplog.text
    assert fleet.status() == FleetStatus(workers=1, busy=0, failures=1)
    expected = local.edit(REQUESTS)
    got = ray_engine(local, fleet).edit(REQUESTS)
    assert_same_delta(expected.delta, got.delta)
    assert fleet.status().workers == 2 and victim not in fleet.worker_pids()
