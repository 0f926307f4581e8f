"""``factsync bench plan``: planning and preparing a job with few and many applied facts.

Two real SQLite stores are filled through the store's own API (``record_desired`` then
``record_already_true``, a thousand facts per ``batch()``): built-in relations in turn,
a few facts per subject, and objects drawn from a pool per relation so that many
subjects share an object and neighbour queries find candidates. Each repetition then
records a new object for ten applied facts and times, on each store in turn, what the
daemon does with them: the reconciler's plan of one job (the live-model check answers
"not yet" without a model, so this is the store's share) and the job's preparation
(``prepare_job`` and the retention sample, as the pipeline's preparing stage runs them).
Preparation's store calls are timed on their own too, since model calls dominate it;
without a model (``--model none``) only that store side runs, with the applied object
standing in for the model's answer.
"""

from __future__ import annotations

import logging
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from factsync.facts.catalog import RelationCatalog
from factsync.facts.records import FactRecord
from factsync.jobs.preparation import (
    CANDIDATES_PER_SLOT,
    contrast_candidates,
    neighbour_candidates,
    prepare_job,
    probes_of,
    retention_facts,
)
from factsync.jobs.reconciler import Reconciler
from factsync.models.loading import LoadedModel
from factsync.policies.schema import BatchPolicy, Policy
from factsync.store.records import CHANGE_FAILED, JOB_FAILED, FactChange
from factsync.store.store import StateStore

JOB_FACTS = 10
"""Fact changes in the job each repetition plans and prepares."""

FACTS_PER_SUBJECT = 3
"""Applied facts per subject, so each change has same-subject neighbours."""

SUBJECTS_PER_OBJECT = 50
"""About this many subjects share each object, so same-object neighbours exist."""

FACTS_PER_COMMIT = 1000
"""Facts filled per store transaction while building a store."""


@dataclass(frozen=True)
class PlanRow:
    """One store size's repetitions, in milliseconds."""

    applied: int
    plan_ms: list[float]
    prepare_ms: list[float]
    neighbours_ms: list[float]
    retention_ms: list[float]


class TimedStore:
    """A store whose method calls add up their wall time in ``seconds``."""

    def __init__(self, store: StateStore) -> None:
        self._store = store
        self.seconds = 0.0

    def __getattr__(self, name: str) -> Any:
        found = getattr(self._store, name)
        if not callable(found):
            return found

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return found(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started

        return timed


@dataclass
class BenchStore:
    """A filled store, its facts' applied and desired objects, and the object pools."""

    store: StateStore
    applied: dict[tuple[str, str], str]
    desired: dict[tuple[str, str], str]
    pools: dict[str, list[str]]


def build_store(path: Path, applied: int, *, seed: int = 0) -> BenchStore:
    """A store at ``path`` holding ``applied`` applied facts (see the module docstring)."""
    rng = random.Random(seed)
    relations = [relation.id for relation in RelationCatalog.built_in()]
    # three at least, so a round can always pick an object neither applied nor desired
    per_pool = max(3, applied // (SUBJECTS_PER_OBJECT * len(relations)))
    pools = {r: [f"{r} object {k}" for k in range(per_pool)] for r in relations}
    store = StateStore(path)
    objects: dict[tuple[str, str], str] = {}
    for start in range(0, applied, FACTS_PER_COMMIT):
        with store.batch():
            for number in range(start, min(start + FACTS_PER_COMMIT, applied)):
                subject = f"Subject {number // FACTS_PER_SUBJECT}"
                relation = relations[number % len(relations)]
                obj = rng.choice(pools[relation])
                record = FactRecord(subject, relation, obj, "bench", f"bench:{number}")
                change = store.record_desired(record=record, relation=relation)
                store.record_already_true(change_id=change.id, version_id="base")
                objects[(subject, relation)] = obj
    return BenchStore(store, objects, dict(objects), pools)


def time_round(
    bench: BenchStore, policy: Policy, loaded: LoadedModel | None, rng: random.Random,
    catalog: RelationCatalog,
) -> tuple[float, float, float, float]:
    """Plan and prepare one job of ``JOB_FACTS`` new objects.

    Returns milliseconds: the plan, all of preparing, and of that the store's calls for
    the job's facts (old objects and neighbours) and for the retention sample.
    """
    store = bench.store
    keys = rng.sample(sorted(bench.applied), JOB_FACTS)
    for key in keys:
        taken = (bench.applied[key], bench.desired[key])
        bench.desired[key] = rng.choice([o for o in bench.pools[key[1]] if o not in taken])
        store.record_desired(record=FactRecord(*key, bench.desired[key], "bench", "round"),
                             relation=key[1])
    planner = Reconciler(store=store, catalog=catalog, policy=policy)
    started = time.perf_counter()
    job = planner.plan(lambda changes: [False] * len(changes))
    plan_seconds = time.perf_counter() - started
    if job is None:
        raise RuntimeError("the reconciler queued no job of the bench's changes")
    changes = store.changes(job_id=job.id)
    facts, retention = TimedStore(store), TimedStore(store)
    started = time.perf_counter()
    if loaded is not None:
        prepare_job(loaded, cast(StateStore, facts), catalog, policy, changes)
    else:
        _prepare_store_side(cast(StateStore, facts), policy, changes)
    probes_of(catalog, retention_facts(cast(StateStore, retention), catalog, exclude=set(keys),
                                       sample=policy.evaluation.retention_sample, seed=job.id))
    prepare_seconds = time.perf_counter() - started
    store.finish_job(job_id=job.id, state=JOB_FAILED, reason="bench round over",
                     change_states={c.id: (CHANGE_FAILED, "bench round") for c in changes})
    return (plan_seconds * 1000, prepare_seconds * 1000, facts.seconds * 1000,
            retention.seconds * 1000)


def _prepare_store_side(
    store: StateStore, policy: Policy, changes: Sequence[FactChange]
) -> None:
    """What ``prepare_job`` asks the store, with the applied object as the old one."""
    in_job = {(c.subject, c.relation) for c in changes}
    editing = policy.editing.max_neighbours if policy.editing.neighbours else 0
    limit = CANDIDATES_PER_SLOT * (editing + policy.evaluation.held_out_neighbours)
    for change in changes:
        applied = store.applied_fact(subject=change.subject, relation=change.relation)
        old = applied.object if applied else None
        neighbour_candidates(store, change, old, limit=limit, exclude=in_job)
        contrast_candidates(store, change, old, policy, exclude=in_job)


def run_plan_bench(
    sizes: Sequence[int],
    *,
    repeats: int,
    loaded: LoadedModel | None,
    directory: Path | None = None,
    seed: int = 0,
    progress: Callable[[str], None] = lambda line: None,
) -> list[PlanRow]:
    """Build one store per size, then time ``repeats`` rounds on each, sizes in turn.

    The sizes take turns each round, so a slower moment of the machine does not fall
    on one of them.
    """
    catalog = RelationCatalog.built_in()
    policy = Policy(batch=BatchPolicy(max_facts=JOB_FACTS, coalesce_seconds=0))
    with tempfile.TemporaryDirectory(dir=directory) as scratch:
        benches = []
        for size in sizes:
            started = time.perf_counter()
            benches.append(build_store(Path(scratch) / f"state-{size}.sqlite", size, seed=seed))
            progress(f"built a store of {size} applied facts in "
                     f"{time.perf_counter() - started:.1f} s")
        times: list[list[tuple[float, ...]]] = [[] for _ in sizes]
        rng = random.Random(seed)
        logging.disable(logging.INFO)  # a log line per plan would be timed with it
        try:
            for _ in range(repeats):
                for index, bench in enumerate(benches):
                    times[index].append(time_round(bench, policy, loaded, rng, catalog))
        finally:
            logging.disable(logging.NOTSET)
            for bench in benches:
                bench.store.close()
    return [PlanRow(size, *([list(column) for column in zip(*rows, strict=True)]))
            for size, rows in zip(sizes, times, strict=True)]


def format_plan_table(rows: Sequence[PlanRow], *, model: str) -> str:
    """The rows as a table, with the ratio of the last size's medians to the first's."""
    prepare = "prepare ms" if model != "none" else "prepare ms (store only)"
    header = ["applied facts", "plan ms", prepare, "of which store: facts ms",
              "store: retention sample ms"]
    lines = [
        f"one job of {JOB_FACTS} fact changes, {len(rows[0].plan_ms)} repetitions, model "
        f"{model}; median (min-max)",
        " | ".join(header),
        " | ".join("-" * len(h) for h in header),
    ]
    for row in rows:
        lines.append(" | ".join([f"{row.applied}", *(_spread(v) for v in _columns(row))]))
    first = rows[0]
    for row in rows[1:]:
        ratios = [statistics.median(b) / statistics.median(a)
                  for a, b in zip(_columns(first), _columns(row), strict=True)]
        lines.append(f"ratio {row.applied}/{first.applied} | "
                     + " | ".join(f"{r:.2f}x" for r in ratios))
    return "\n".join(lines)


def _columns(row: PlanRow) -> list[list[float]]:
    return [row.plan_ms, row.prepare_ms, row.neighbours_ms, row.retention_ms]


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"
