"""``bench scale``: facts per second of the work an executor fans out, by worker count.

The same facts go through the in-process executor (the first row) and through Ray
fleets of each asked size: the OPTIMIZATION stage (z for every fact, one IME pass on
the unedited model) and KPI scoring (each fact's prompt, paraphrases and held-out
neighbours, the retention probes and the fluency texts). Each row also reports how far
its targets are from the local ones, so a speed-up never hides a different edit. Fleet
start-up (Ray, and each worker loading the model) is not timed: a daemon pays it once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from factsync.editing.targets import TargetResult, TargetSettings
from factsync.evaluation.cases import EvalCase
from factsync.evaluation.kpis import EditCheck, Prompted
from factsync.executors.local import Executor, LocalExecutor
from factsync.models.loading import LoadedModel

Result = TypeVar("Result")


@dataclass(frozen=True)
class ScaleRow:
    """One executor's figures.

    Attributes:
        executor: ``local`` or ``ray``.
        workers: its workers (1 for local).
        optimisation_facts_per_second: facts whose z the OPTIMIZATION stage found, per second.
        scoring_facts_per_second: facts whose KPIs were scored, per second.
        target_difference: largest |z - z_local| over all facts and dimensions.
        perplexity: the scored perplexity (equal across rows up to rounding).
    """

    executor: str
    workers: int
    optimisation_facts_per_second: float
    scoring_facts_per_second: float
    target_difference: float
    perplexity: float


@dataclass(frozen=True)
class ScaleWork:
    """The work every row does: the facts, their checks, and where to optimise."""

    loaded: LoadedModel
    cases: Sequence[EvalCase]
    layer: int
    contexts: list[str]
    settings: TargetSettings
    retention: Sequence[Prompted]
    texts: Sequence[str]

    def checks(self) -> list[EditCheck]:
        """One check per case: its prompt, paraphrases and held-out neighbours."""
        return [EditCheck(
            change_id=case.case_id, relation="bench", prompt=case.request.prompt,
            new_object=case.request.new_object, old_object=case.request.old_object,
            paraphrases=case.paraphrases,
            held_out=tuple((template.format(subject), case.request.old_object)
                           for subject, template in case.neighbourhood))
            for case in self.cases]


def measure_row(work: ScaleWork, executor: Executor, name: str, workers: int,
                local: TargetResult | None) -> tuple[ScaleRow, TargetResult]:
    """Time both stages through ``executor``; the row and its targets."""
    requests = [case.request for case in work.cases]
    targets, optimise_seconds = _timed(lambda: executor.optimise(
        work.loaded, requests, work.layer, work.contexts, work.settings, use_neighbours=False))
    scored, score_seconds = _timed(lambda: executor.measure(
        work.loaded, work.checks(), work.retention, work.texts))
    difference = 0.0 if local is None else float((targets.z.cpu() - local.z.cpu()).abs().max())
    return ScaleRow(executor=name, workers=workers,
                    optimisation_facts_per_second=len(requests) / optimise_seconds,
                    scoring_facts_per_second=len(requests) / score_seconds,
                    target_difference=difference, perplexity=scored.perplexity), targets


def run_scale(work: ScaleWork, fleets: Sequence[tuple[int, Callable[[], Executor]]]
              ) -> list[ScaleRow]:
    """The local row, then one row per (workers, start the fleet) in ``fleets``."""
    local_row, local = measure_row(work, LocalExecutor(), "local", 1, None)
    rows = [local_row]
    for workers, start in fleets:
        executor = start()
        try:
            rows.append(measure_row(work, executor, "ray", workers, local)[0])
        finally:
            executor.close()
    return rows


def format_table(rows: Sequence[ScaleRow]) -> str:
    """The rows side by side, with each one's speed against the local row."""
    local = rows[0]
    lines = ["executor | workers | optimisation facts/s | x local | scoring facts/s | "
             "x local | max abs z diff | perplexity",
             "--- | --- | --- | --- | --- | --- | --- | ---"]
    for row in rows:
        lines.append(
            f"{row.executor} | {row.workers} | {row.optimisation_facts_per_second:.3f} | "
            f"{row.optimisation_facts_per_second / local.optimisation_facts_per_second:.2f} | "
            f"{row.scoring_facts_per_second:.2f} | "
            f"{row.scoring_facts_per_second / local.scoring_facts_per_second:.2f} | "
            f"{row.target_difference:.2e} | {row.perplexity:.3f}")
    return "\n".join(lines)


def _timed(work: Callable[[], Result]) -> tuple[Result, float]:
    started = time.perf_counter()
    result = work()
    return result, time.perf_counter() - started
