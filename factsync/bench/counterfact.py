"""``factsync bench counterfact``: editing methods side by side on COUNTERFACT or ZsRE records.

Every method edits the same records in sequential batches on the same model (edits of
earlier batches stay applied, as in a deployed model), then all records are scored, one
value per record (``evaluation.suites``); the table gives each metric's mean over the
records with its 95% bootstrap interval. NME neighbours and the scored neighbourhood
come from ``prepare_suite``: a prompt that any record edits with is scored for none.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from tqdm import tqdm

from factsync.editing.covariance import KeyStatistics
from factsync.editing.engine import EditEngine, EngineSettings
from factsync.editing.guards import engine_guards
from factsync.evaluation.fluency import perplexity_ratio, text_nlls
from factsync.evaluation.intervals import (
    Interval,
    bootstrap_interval,
    format_interval,
    paired_difference_interval,
)
from factsync.evaluation.record_scores import METRICS
from factsync.evaluation.suites import EvalCase, Suite, prepare_suite
from factsync.executors.local import Executor, LocalExecutor
from factsync.models.loading import LoadedModel

log = logging.getLogger(__name__)

COLUMNS = (*METRICS, "perplexity_ratio", "iterations_mean", "seconds")


def standard_methods(base: EngineSettings, max_iterations: int) -> dict[str, EngineSettings]:
    """The compared methods, all sharing ``base``'s optimisation and spread settings."""
    alpha = replace(base.spread, algorithm="alphaedit")
    return {
        "memit": replace(base, max_iterations=1, neighbours=False),
        "memit+ime": replace(base, max_iterations=max_iterations, neighbours=False),
        "memit+ime+nme": replace(base, max_iterations=max_iterations, neighbours=True),
        "alphaedit+ime+nme": replace(
            base, max_iterations=max_iterations, neighbours=True, spread=alpha
        ),
    }


@dataclass(frozen=True)
class MethodRow:
    """One row of the table: per-record scores plus fluency, passes and time.

    Attributes:
        values: per metric of ``METRICS``, its value for each record (``None`` where the
            record has nothing of that kind).
        fluency: per fluency text, its summed NLL and scored tokens (``text_nlls``).
        perplexity: perplexity on the fluency texts against the unedited model's, with
            its 95% bootstrap interval over the texts.
        iterations_mean: IME passes per fact, on average.
        seconds: editing time over every batch.
    """

    values: dict[str, list[float | None]]
    fluency: list[tuple[float, int]]
    perplexity: Interval
    iterations_mean: float
    seconds: float

    @property
    def perplexity_ratio(self) -> float:
        """Perplexity on the fluency texts against the unedited model's."""
        return self.perplexity.mean

    def mean(self, metric: str) -> float | None:
        """Mean of ``metric`` over the records that have a value; ``None`` if none has."""
        present = self._present(metric)
        return sum(present) / len(present) if present else None

    def interval(self, metric: str) -> Interval | None:
        """95% bootstrap interval of ``metric``'s mean over records; ``None`` if none has."""
        present = self._present(metric)
        return bootstrap_interval(present) if present else None

    def flat(self) -> dict[str, float | None]:
        """Every column by name, as the JSON report spells them."""
        means: dict[str, float | None] = {metric: self.mean(metric) for metric in METRICS}
        return means | {
            "perplexity_ratio": self.perplexity_ratio,
            "iterations_mean": self.iterations_mean,
            "seconds": self.seconds,
        }

    def _present(self, metric: str) -> list[float]:
        return [value for value in self.values[metric] if value is not None]


def run_counterfact(
    loaded: LoadedModel,
    cases: list[EvalCase],
    methods: dict[str, EngineSettings],
    *,
    statistics: dict[int, KeyStatistics],
    contexts: list[str],
    fluency_texts: list[str],
    batch_size: int,
    neighbours_per_fact: int = 1,
    dataset: str = "counterfact",
    spare: Sequence[EvalCase] = (),
    executor: Executor | None = None,
    sensitivity: torch.Tensor | None = None,
    joint_moment: torch.Tensor | None = None,
) -> dict[str, MethodRow]:
    """Edit ``cases`` of ``dataset`` with each method and score them.

    ``spare`` records may lend editing neighbours (see ``prepare_suite``). The model is
    restored after each method. ``executor`` runs the z optimisation (in this process
    by default). ``sensitivity`` is the last edit layer's, for methods of the ``natural``
    step rule; ``joint_moment`` the edit layers' joint key statistics, for methods that
    spread over them jointly.
    """
    executor = executor or LocalExecutor()
    suite = prepare_suite(loaded, dataset, cases, neighbours_per_fact=neighbours_per_fact,
                          spare=spare)
    base_nlls = text_nlls(loaded, fluency_texts)
    rows = {"unedited": _row(loaded, suite, base_nlls, fluency_texts, 0.0, 0.0)}
    requests = suite.requests
    for name, settings in methods.items():
        engine = EditEngine(loaded, settings, statistics, contexts,
                            optimiser=executor.optimise, sensitivity=sensitivity,
                            joint_moment=joint_moment, guards=engine_guards(loaded, settings))
        handles, passes, seconds, chain = [], [], 0.0, []
        by_pass: list[float] = []  # optimisation seconds of pass i, summed over batches
        batches = range(0, len(requests), batch_size)
        for start in tqdm(batches, desc=name, unit="batch"):
            started = time.monotonic()
            result = engine.edit(requests[start : start + batch_size])
            handles.append(result.delta.apply(loaded))
            engine.remember(result)
            chain.append((f"{name}/{start}", result.delta))
            executor.follow(chain)
            seconds += time.monotonic() - started
            passes += [len(r) for r in result.records]
            for index, timing in enumerate(result.timings):
                if index == len(by_pass):
                    by_pass.append(0.0)
                by_pass[index] += timing.optimisation_seconds
        try:
            rows[name] = _row(
                loaded,
                suite,
                base_nlls,
                fluency_texts,
                sum(passes) / len(passes),
                seconds,
            )
        finally:
            for handle in reversed(handles):
                handle.revert()
            executor.follow([])
        log.info("%s: %s", name, rows[name].flat())
        log.info(
            "%s: z optimisation seconds by IME pass: %s",
            name,
            ", ".join(f"{x:.0f}" for x in by_pass),
        )
    return rows


def _row(
    loaded: LoadedModel,
    suite: Suite,
    base_nlls: list[tuple[float, int]],
    texts: list[str],
    iterations: float,
    seconds: float,
) -> MethodRow:
    fluency = text_nlls(loaded, texts)
    return MethodRow(
        values=suite.score(loaded),
        fluency=fluency,
        perplexity=perplexity_ratio(fluency, base_nlls),
        iterations_mean=iterations,
        seconds=seconds,
    )


def format_table(rows: dict[str, MethodRow]) -> str:
    """A plain-text table: rows are methods, columns the KPIs.

    A metric's cell is its mean over records and its 95% bootstrap interval.
    """
    headers = [
        "method",
        "eff.succ",
        "eff.acc",
        "para.succ",
        "para.acc",
        "nbhd.succ",
        "nbhd.acc",
        "ppl.ratio",
        "iters",
        "seconds",
    ]
    lines = [" | ".join(headers), " | ".join("-" * len(h) for h in headers)]
    for name, row in rows.items():
        flat = row.flat()
        cells = [_interval_cell(row.interval(metric)) for metric in METRICS]
        cells += [_interval_cell(row.perplexity), _cell(flat["iterations_mean"]),
                  _cell(flat["seconds"])]
        lines.append(" | ".join([name, *cells]))
    return "\n".join(lines)


def against_baseline(baseline: dict[str, MethodRow],
                     rows: dict[str, MethodRow]) -> dict[str, tuple[MethodRow, MethodRow]]:
    """Each method of ``rows`` with the same method in ``baseline`` (another run over the
    same records, in another dtype say)."""
    return {name: (row, baseline[name]) for name, row in rows.items()}


def against_method(rows: dict[str, MethodRow],
                   reference: str) -> dict[str, tuple[MethodRow, MethodRow]]:
    """Each other method of ``rows`` with the method ``reference`` of the same run.
    Raises ``ValueError`` for an unknown reference."""
    if reference not in rows:
        raise ValueError(f"no method {reference!r} to compare with; the run has "
                         f"{', '.join(rows)}")
    return {name: (row, rows[reference]) for name, row in rows.items() if name != reference}


def paired_differences(row: MethodRow, reference: MethodRow) -> dict[str, Interval | None]:
    """Per metric of ``METRICS``: the mean of ``row``'s per-record value minus
    ``reference``'s over records scored by both, with its paired 95% bootstrap interval,
    much narrower than either row's own interval because what the records share cancels."""
    return {metric: paired_difference_interval(row.values[metric], reference.values[metric])
            for metric in METRICS}


def perplexity_over_reference(row: MethodRow, reference: MethodRow) -> Interval:
    """``row``'s perplexity over ``reference``'s on the fluency texts, with its 95%
    bootstrap interval paired over the texts."""
    return perplexity_ratio(row.fluency, reference.fluency)


def format_differences(pairs: dict[str, tuple[MethodRow, MethodRow]]) -> str:
    """Per method: each metric's ``paired_differences`` from its reference, the perplexity
    ratio's difference, its perplexity over the reference's (paired), and the largest
    absolute difference of a mean."""
    lines = [" | ".join(["method", *METRICS, "perplexity_ratio", "perplexity_over_reference",
                         "largest"]),
             " | ".join(["---"] * (len(METRICS) + 4))]
    for name, (row, reference) in pairs.items():
        differences = paired_differences(row, reference)
        perplexity = row.perplexity_ratio - reference.perplexity_ratio
        largest = max([abs(d.mean) for d in differences.values() if d is not None]
                      + [abs(perplexity)])
        cells = ["-" if d is None else format_interval(d, signed=True)
                 for d in differences.values()]
        over = format_interval(perplexity_over_reference(row, reference))
        lines.append(" | ".join([name, *cells, f"{perplexity:+.3f}", over, f"{largest:.3f}"]))
    return "\n".join(lines)


def differences_json(pairs: dict[str, tuple[MethodRow, MethodRow]]) -> dict:
    """``format_differences`` as ``{method: {metric: [mean, low, high] or null,
    "perplexity_ratio": difference, "perplexity_over_reference": [mean, low, high]}}``."""
    report = {}
    for name, (row, reference) in pairs.items():
        differences = paired_differences(row, reference)
        report[name] = {
            metric: None if d is None else d.as_list()
            for metric, d in differences.items()
        } | {"perplexity_ratio": row.perplexity_ratio - reference.perplexity_ratio,
             "perplexity_over_reference": perplexity_over_reference(row, reference).as_list()}
    return report


def _interval_cell(interval: Interval | None) -> str:
    return "-" if interval is None else format_interval(interval)


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def to_json(rows: dict[str, MethodRow], n: int, *, dataset: str) -> dict:
    """The numbers as ``{"dataset": D, "n": N, "methods": {name: {column: value}}}``.

    Each method also has ``"intervals": {metric: [low, high]}``, the 95% bootstrap
    interval of each metric's mean over records (``null`` when no record has a value),
    and of the perplexity ratio over the fluency texts.
    """
    methods = {}
    for name, row in rows.items():
        intervals = {metric: row.interval(metric) for metric in METRICS}
        intervals["perplexity_ratio"] = row.perplexity
        methods[name] = row.flat() | {
            "intervals": {
                metric: None if i is None else [i.low, i.high] for metric, i in intervals.items()
            }
        }
    return {"dataset": dataset, "n": n, "methods": methods}
