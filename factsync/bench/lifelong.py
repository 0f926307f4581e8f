"""``factsync bench lifelong``: many facts, job after job, on one model.

Each method feeds the same records to one engine in sequential jobs, the way the daemon
applies them: edit, apply the delta, remember the edit's state. At checkpoints every
fact applied so far is measured (``lifelong_scoring``), so the run shows how retention,
neighbours, fluency, canaries and weight norms drift as facts pile up. The model is
back at its base weights before the next method starts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import torch
from tqdm import tqdm

from factsync.bench.counterfact import standard_methods
from factsync.bench.job_fluency import JobFluency, JobReading
from factsync.bench.lifelong_scoring import ChangedBack, Checkpoint, Yardstick
from factsync.bench.norm_growth import NormGrowth
from factsync.bench.worn_facts import Restated, WornFacts
from factsync.editing.covariance import KeyStatistics
from factsync.editing.delta import ModelDelta, restored_weights
from factsync.editing.engine import EditEngine, EditResult, EngineSettings
from factsync.editing.engine_state import EngineState, concatenated
from factsync.editing.guards import engine_guards
from factsync.editing.requests import EditRequest
from factsync.editing.spread import Algorithm
from factsync.executors.chain import DeltaChain
from factsync.executors.local import Executor, LocalExecutor
from factsync.models.loading import LoadedModel
from factsync.policies.schema import Policy, load_policy

log = logging.getLogger(__name__)


def lifelong_methods(base: EngineSettings, max_iterations: int) -> dict[str, EngineSettings]:
    """``default``, the engine settings of the daemon's default policy, and variants of
    it: ``default+alphaedit`` spreads with AlphaEdit's null-space projection and
    ``default+hold-superseded`` keeps holding a subject's earlier keys in place when it
    is written again. Then the methods of ``bench counterfact`` built on ``base``."""
    default = Policy().editing.engine_settings()
    alphaedit = replace(default.spread, algorithm=Algorithm.ALPHAEDIT)
    variants = {
        "default": default,
        "default+alphaedit": replace(default, spread=alphaedit),
        "default+hold-superseded": replace(default, release_superseded=False),
    }
    return variants | standard_methods(base, max_iterations)


def chosen_methods(
    names: str, base: EngineSettings, max_iterations: int
) -> dict[str, EngineSettings]:
    """The methods named in the comma-separated ``names``, in that order.

    A name is one of ``lifelong_methods`` or the path of a policy file ending in
    ``.yaml`` or ``.yml``, whose ``editing`` settings the method then uses (so a policy
    can be tried on a long stream before the daemon runs it). Raises ``ValueError``
    naming any unknown method and the choices, and ``SchemaError`` for a bad policy.
    """
    methods = lifelong_methods(base, max_iterations)
    wanted = [name.strip() for name in names.split(",") if name.strip()]
    for name in wanted:
        if name.endswith((".yaml", ".yml")):
            methods[name] = load_policy(Path(name)).editing.engine_settings()
    unknown = [name for name in wanted if name not in methods]
    if unknown or not wanted:
        problem = f"unknown methods {unknown}" if unknown else "no methods"
        raise ValueError(f"{problem} in {names!r}; choose from {', '.join(methods)} "
                         "or a policy file (.yaml)")
    return {name: methods[name] for name in wanted}


def edit_layers(loaded: LoadedModel, methods: dict[str, EngineSettings]) -> tuple[int, ...]:
    """Every layer some method edits, so one set of key statistics serves them all."""
    return tuple(sorted({layer for s in methods.values() for layer in s.edit_layers(loaded)}))


def checkpoint_facts(n: int, batch: int, every: int) -> list[int]:
    """Facts applied after each job at which a checkpoint is taken.

    A checkpoint follows the job that reaches or passes each multiple of ``every``, and
    one always follows the last job.
    """
    for name, value in (("n", n), ("batch", batch), ("checkpoint_every", every)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    due, previous = [], 0
    for start in range(0, n, batch):
        applied = min(start + batch, n)
        if applied // every > previous // every or applied == n:
            due.append(applied)
        previous = applied
    return due


@dataclass
class MethodRun:
    """One method's checkpoints so far (at least one), the last being the final state of
    its stream; then, when the run changes facts back, the model after that.

    ``refused`` holds the places in the stream (from 1) of the facts a run that refuses
    canary losses left unedited, in order; ``repaired``, per canary a run that repairs
    them stated again, the place of the first fact of the job that lost it and the canary;
    ``refreshed``, per applied fact a run that refreshes worn facts stated again (worn,
    or of a subject its job wrote), the place of the first fact of the job it joined and
    its own. ``job_fluency`` holds the fluency texts read after each job
    (``job_fluency.JobReading``).
    """

    checkpoints: list[Checkpoint] = field(default_factory=list)
    changed_back: ChangedBack | None = None
    refused: list[int] = field(default_factory=list)
    repaired: list[tuple[int, str]] = field(default_factory=list)
    refreshed: list[tuple[int, int]] = field(default_factory=list)
    job_fluency: list[JobReading] = field(default_factory=list)

    @property
    def final(self) -> Checkpoint:
        """The latest checkpoint."""
        return self.checkpoints[-1]


@dataclass(frozen=True)
class MethodProgress:
    """Where one method stood after its latest saved job.

    Attributes:
        facts: facts applied.
        seconds: editing seconds over those facts.
        delta: every applied job's delta, composed.
        state: the keys every applied job wrote.
        refused: places in the stream (from 1) of the facts refused so far.
        repaired: the canaries stated again so far (``MethodRun.repaired``).
        refreshed: the applied facts stated again so far (``MethodRun.refreshed``).
        untaken: places in the stream (from 1) of the facts whose latest edit did not
            take, which a run that refreshes worn facts does not check.
        job_fluency: the fluency texts read after each job so far.
    """

    facts: int
    seconds: float
    delta: ModelDelta
    state: EngineState
    refused: tuple[int, ...] = ()
    repaired: tuple[tuple[int, str], ...] = ()
    refreshed: tuple[tuple[int, int], ...] = ()
    untaken: tuple[int, ...] = ()
    job_fluency: tuple[JobReading, ...] = ()


class RunStore(Protocol):
    """Where a run keeps what it needs to continue after being stopped
    (``lifelong_resume.RunDirectory``)."""

    def load(self) -> LifelongRun | None:
        """The run as its last saved job left it; ``None`` when nothing is saved."""

    def progress(self, method: str) -> MethodProgress | None:
        """``method``'s delta and state after its last saved job, if any."""

    def save(self, run: LifelongRun, method: str, progress: MethodProgress) -> None:
        """Keep ``run`` and where ``method`` stands after one of its jobs."""


@dataclass
class LifelongRun:
    """A whole run: the unedited reference and each method's checkpoints.

    Attributes:
        dataset: the records' dataset (``counterfact`` or ``zsre``).
        n: records edited per method.
        batch: facts per job.
        unedited: the unedited model measured on all ``n`` records.
        methods: per method that reached a checkpoint, in the order run, its checkpoints.
    """

    dataset: str
    n: int
    batch: int
    unedited: Checkpoint
    methods: dict[str, MethodRun] = field(default_factory=dict)


def run_lifelong(
    loaded: LoadedModel,
    yardstick: Yardstick,
    methods: dict[str, EngineSettings],
    *,
    statistics: dict[int, KeyStatistics],
    contexts: list[str],
    batch_size: int,
    checkpoint_every: int,
    on_checkpoint: Callable[[LifelongRun], None] | None = None,
    executor: Executor | None = None,
    store: RunStore | None = None,
    change_back: int = 0,
    sensitivities: Mapping[str, torch.Tensor | None] | None = None,
    joint_moments: Mapping[str, torch.Tensor | None] | None = None,
    unedited: Checkpoint | None = None,
    refuse_canary_loss: bool = False,
    canary_repairs: Sequence[EditRequest] = (),
    refresh_worn: int = 0,
) -> LifelongRun:
    """Apply every record of ``yardstick.suite`` with each method in turn, job by job.

    ``loaded`` must have the weights ``yardstick`` was prepared on: they are the
    unedited reference, and its text NLLs are not measured twice.

    ``on_checkpoint`` sees the run after each checkpoint (to save it, say). Each method
    starts from the weights the model had at the call, and the model has them again
    when this returns. ``executor`` runs the z optimisation (in this process by
    default); it must start on the weights the model has at the call. With a ``store``
    the run continues from its last saved job and saves after each one there.
    ``change_back`` facts, those of the first records, are then changed back to their
    old objects in jobs of ``batch_size``, as a feed that reverts them would, and the
    model is measured once more (``Yardstick.measure_changed_back``); a saved run does
    not keep that measurement, so it cannot be combined with a ``store``.
    ``sensitivities`` holds, per method of the ``natural`` step rule, its last edit
    layer's sensitivity; ``joint_moments``, per method that spreads over its edit layers
    jointly, their joint key statistics (``editing.build.per_method_inputs``).
    ``unedited`` is ``measure_unedited``'s measurement when it is known already (from an
    earlier run of the same records, say); a new run measures it otherwise.
    With ``refuse_canary_loss`` a job whose candidate loses a canary the model held
    before it is undone and its facts tried again in halves, down to single facts; a
    fact that alone loses one is refused and stays unedited (``MethodRun.refused``), as
    a policy gate on canaries would leave it. ``canary_repairs`` (per canary, in
    ``Yardstick.canary_names`` order, the edit that states it again) turn that gate on
    and add a step before the halving: the job is tried once more with the lost
    canaries' edits in it, and kept when it then loses none (``MethodRun.repaired``).
    ``refresh_worn`` applied facts are checked before each job (``WornFacts``), and
    those whose edit took but no longer passes the method's took rule join the job with
    the standing facts of the subjects it writes (``MethodRun.refreshed``). The seconds
    per fact include all that work, but not the reading of the fluency texts after
    every job (``MethodRun.job_fluency``).
    """
    executor = executor or LocalExecutor()
    requests = yardstick.suite.requests
    n = len(requests)
    if not 0 <= change_back <= n:
        raise ValueError(f"change_back must be between 0 and the {n} records, got {change_back}")
    if change_back and store is not None:
        raise ValueError("changing facts back cannot be combined with a saved run (--state)")
    due = set(checkpoint_facts(n, batch_size, checkpoint_every))
    run = store.load() if store is not None else None
    if run is None:
        run = LifelongRun(dataset=yardstick.suite.dataset, n=n, batch=batch_size,
                          unedited=unedited or measure_unedited(loaded, yardstick, methods))
    reader = JobFluency(loaded, yardstick.fluency_texts)
    for name, settings in methods.items():
        saved = store.progress(name) if store is not None else None
        if saved is not None and saved.facts == n:
            continue  # finished before the run was stopped
        engine = EditEngine(loaded, settings, statistics, contexts,
                            optimiser=executor.optimise,
                            sensitivity=(sensitivities or {}).get(name),
                            joint_moment=(joint_moments or {}).get(name),
                            guards=engine_guards(loaded, settings))
        growth = NormGrowth(loaded, engine.layers)
        seconds, chain, kept, first = 0.0, DeltaChain(), EngineState.empty(), 0
        refused: list[int] = []
        repaired: list[tuple[int, str]] = []
        refreshed: list[tuple[int, int]] = []
        untaken: tuple[int, ...] = ()
        job_fluency: list[JobReading] = []
        # One snapshot of the edited weights undoes every job, where a handle per job
        # would keep a copy of them per job.
        with restored_weights(loaded, [loaded.spec.mlp_out_path(i) for i in engine.layers]):
            if saved is not None:
                saved.delta.apply(loaded)
                engine.restore([saved.state])
                seconds, first, kept = saved.seconds, saved.facts, saved.state
                refused, repaired = list(saved.refused), list(saved.repaired)
                refreshed, untaken = list(saved.refreshed), saved.untaken
                job_fluency = list(saved.job_fluency)
                chain.append(f"{name}/0-{first}", saved.delta)
                executor.follow(chain.steps)
            gate = (_CanaryGate(engine, yardstick, executor, chain, canary_repairs)
                    if refuse_canary_loss or canary_repairs else None)
            wear = (WornFacts(requests, contexts, batch=batch_size, sample=refresh_worn,
                              rule=settings.took_rule, phrasings=settings.took_phrasings,
                              untaken=[place - 1 for place in untaken])
                    if refresh_worn else None)
            for start in tqdm(range(first, n, batch_size), desc=name, unit="job",
                              initial=first // batch_size, total=-(-n // batch_size)):
                started = time.monotonic()
                places = list(range(start + 1, min(start + batch_size, n) + 1))
                if wear is not None:
                    again = wear.restated(loaded, start, places[-1])
                    _log_restated(places, again)
                    refreshed += [(start + 1, index + 1) for index in again.facts]
                    places += [index + 1 for index in again.facts]
                job = [requests[place - 1] for place in places]
                if gate is None:
                    results = [_apply_job(engine, job, executor, chain, f"{name}/{start}")]
                else:
                    gated = gate.apply(job, places, f"{name}/{start}")
                    results = gated.results
                    refused += gated.refused
                    repaired += gated.repaired
                if wear is not None:
                    left_out = set(refused)
                    wear.note_edited(loaded, [p - 1 for p in places if p not in left_out])
                    untaken = tuple(index + 1 for index in wear.untaken)
                seconds += time.monotonic() - started
                applied = min(start + batch_size, n)
                job_fluency.append(_read_fluency(reader, loaded, applied, job_fluency))
                if applied in due:
                    checkpoint = yardstick.measure(loaded, applied, growth, seconds / applied)
                    method_run = run.methods.setdefault(name, MethodRun())
                    method_run.checkpoints.append(checkpoint)
                    method_run.refused = list(refused)
                    method_run.repaired = list(repaired)
                    method_run.refreshed = list(refreshed)
                    method_run.job_fluency = list(job_fluency)
                if store is not None:
                    kept = concatenated([kept, *(result.state for result in results)])
                    store.save(run, name, MethodProgress(applied, seconds, chain.whole(), kept,
                                                         tuple(refused), tuple(repaired),
                                                         tuple(refreshed), untaken,
                                                         tuple(job_fluency)))
                if applied in due and on_checkpoint is not None:
                    on_checkpoint(run)
            if change_back:
                run.methods[name].changed_back = _change_back(
                    engine, yardstick, growth, requests[:change_back], batch_size=batch_size,
                    executor=executor, chain=chain, name=name)
                if on_checkpoint is not None:
                    on_checkpoint(run)
        executor.follow([])
    return run


def measure_unedited(loaded: LoadedModel, yardstick: Yardstick,
                     methods: dict[str, EngineSettings]) -> Checkpoint:
    """The unedited model, which ``yardstick`` was prepared on, measured over every record
    (its weights, those ``methods`` edit, have grown by nothing)."""
    untouched = NormGrowth(loaded, list(edit_layers(loaded, methods)))
    return yardstick.measure(loaded, len(yardstick.suite.requests), untouched, 0.0,
                             unedited=True)


def _change_back(engine: EditEngine, yardstick: Yardstick, growth: NormGrowth,
                 requests: list[EditRequest], *, batch_size: int, executor: Executor,
                 chain: DeltaChain, name: str) -> ChangedBack:
    """Change the facts of ``requests`` (applied earlier) back to their old objects in
    jobs of ``batch_size``, then measure the model."""
    reverted = [request.reverted() for request in requests]
    started = time.monotonic()
    for start in tqdm(range(0, len(reverted), batch_size), desc=f"{name}, changing back",
                      unit="job"):
        _apply_job(engine, reverted[start : start + batch_size], executor, chain,
                   f"{name}/back-{start}")
    seconds = time.monotonic() - started
    return yardstick.measure_changed_back(engine.loaded, len(reverted), growth,
                                          seconds / len(reverted))


def _apply_job(engine: EditEngine, requests: list[EditRequest], executor: Executor,
               chain: DeltaChain, label: str) -> EditResult:
    """Edit ``requests``, apply the delta and remember the edit, as the daemon does, and
    let the executor follow (``chain`` gains the delta under ``label``)."""
    result = engine.edit(requests)
    result.delta.apply(engine.loaded)
    _keep(engine, result, executor, chain, label)
    return result


def _keep(engine: EditEngine, result: EditResult, executor: Executor, chain: DeltaChain,
          label: str) -> None:
    """Remember an applied edit and let the executor follow it."""
    engine.remember(result)
    chain.append(label, result.delta)
    executor.follow(chain.steps)


@dataclass(frozen=True)
class _Gated:
    """What a job became under the canary gate.

    Attributes:
        results: the edits applied.
        refused: places in the stream (from 1) of the facts refused.
        repaired: (place in the stream of a job's first fact, canary) per canary stated
            again in that job.
    """

    results: list[EditResult] = field(default_factory=list)
    refused: list[int] = field(default_factory=list)
    repaired: list[tuple[int, str]] = field(default_factory=list)


class _CanaryGate:
    """Applies jobs as a policy gate on canaries would let them through: no canary the
    model held before a job may be lost by it.

    With ``repairs`` (per canary, in ``Yardstick.canary_names`` order, the edit that
    states it again), a job that loses canaries is first tried once more with their
    edits added, before it is halved.
    """

    def __init__(self, engine: EditEngine, yardstick: Yardstick, executor: Executor,
                 chain: DeltaChain, repairs: Sequence[EditRequest] = ()) -> None:
        self._engine = engine
        self._yardstick = yardstick
        self._executor = executor
        self._chain = chain
        self._names = yardstick.canary_names()
        if repairs and len(repairs) != len(self._names):
            raise ValueError(f"{len(repairs)} canary repairs for {len(self._names)} canaries")
        self._repairs = dict(zip(self._names, repairs, strict=True)) if repairs else {}
        self._held = yardstick.canaries_held(engine.loaded)

    def apply(self, requests: list[EditRequest], places: list[int], label: str) -> _Gated:
        """Edit and apply ``requests`` (the records at ``places`` in the stream, from 1);
        a candidate that loses a canary is undone, tried with the lost canaries' repairs
        when there are any, and then its halves tried in turn."""
        result, lost = self._try(requests, label)
        if result is not None:
            return _Gated([result])
        if self._repairs:
            repairs = [self._repairs[name] for name in lost]
            result, _ = self._try([*requests, *repairs], f"{label}+repair")
            if result is not None:
                log.info("the job of records %s keeps every canary with %s stated again in it",
                         _listed(places), "; ".join(lost))
                return _Gated([result], repaired=[(places[0], name) for name in lost])
        if len(requests) == 1:
            log.info("refused record #%d (%s): its edit loses the canary %s", places[0],
                     requests[0].prompt, "; ".join(lost))
            return _Gated(refused=[places[0]])
        middle = len(requests) // 2
        first = self.apply(requests[:middle], places[:middle], f"{label}a")
        second = self.apply(requests[middle:], places[middle:], f"{label}b")
        return _Gated(first.results + second.results, first.refused + second.refused,
                      first.repaired + second.repaired)

    def _try(self, requests: list[EditRequest],
             label: str) -> tuple[EditResult | None, list[str]]:
        """Edit and apply ``requests``, and keep the edit when it loses no canary the
        model held, else undo it. The edit kept (``None`` when undone) and the canaries
        lost."""
        result = self._engine.edit(requests)
        applied = result.delta.apply(self._engine.loaded)
        after = self._yardstick.canaries_held(self._engine.loaded)
        lost = [name for name, before, now in zip(self._names, self._held, after, strict=True)
                if before and not now]
        if lost:
            applied.revert()
            return None, lost
        self._held = after
        _keep(self._engine, result, self._executor, self._chain, label)
        return result, []


def _read_fluency(reader: JobFluency, loaded: LoadedModel, facts: int,
                  earlier: list[JobReading]) -> JobReading:
    """The fluency texts read after the job that brought the stream to ``facts`` facts,
    logged with what that job added to the ``earlier`` readings."""
    reading = reader.read(loaded, facts)
    before = earlier[-1].later_tokens if earlier else 0.0
    log.info("after %d facts the fluency texts' later tokens have %+.1f nats (this job %+.1f),"
             " their first token %+.1f", facts, reading.later_tokens,
             reading.later_tokens - before, reading.first_token)
    return reading


def _log_restated(places: list[int], again: Restated) -> None:
    """Say which applied facts join the job of the records at ``places``, and why."""
    for indices, why in ((again.worn, "worn facts"),
                         (again.siblings, "standing facts of subjects it writes")):
        if indices:
            log.info("records %s: stating %d %s again in their job: %s", _listed(places),
                     len(indices), why, _listed([index + 1 for index in indices]))


def _listed(places: list[int]) -> str:
    """``places`` for a log line: ``#3-#7`` when they run on, else each one."""
    if len(places) > 1 and places == list(range(places[0], places[0] + len(places))):
        return f"#{places[0]}-#{places[-1]}"
    return ", ".join(f"#{place}" for place in places)
