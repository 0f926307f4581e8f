"""``factsync bench counterfact``: editing methods side by side on COUNTERFACT records.

Every method edits the same records in sequential batches on the same model (edits of
earlier batches stay applied, as in a deployed model), then all records are scored.
NME neighbours come from each record's neighbourhood samples that the unedited model
gets right; specificity is scored on the record's other neighbourhood prompts only.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, replace

from tqdm import tqdm

from factsync.editing.covariance import KeyStatistics
from factsync.editing.engine import EditEngine, EngineSettings
from factsync.evaluation.counterfact import CounterfactCase, with_neighbours
from factsync.evaluation.fluency import perplexity
from factsync.evaluation.probes import (
    Probe,
    ProbeScores,
    neighbourhood_reference,
    score_probes,
)
from factsync.models.loading import LoadedModel
from factsync.models.scoring import score_targets
from factsync.models.text import PromptSpec, object_ids

log = logging.getLogger(__name__)

COLUMNS = (
    "efficacy_success",
    "efficacy_accuracy",
    "paraphrase_success",
    "paraphrase_accuracy",
    "neighbourhood_success",
    "neighbourhood_accuracy",
    "perplexity_ratio",
    "iterations_mean",
    "seconds",
)


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
    """One row of the table: the probe KPIs plus fluency, passes and time."""

    scores: ProbeScores
    perplexity_ratio: float
    iterations_mean: float
    seconds: float

    def flat(self) -> dict[str, float | None]:
        """Every column by name, as the JSON report spells them."""
        extra = {k: v for k, v in asdict(self).items() if k != "scores"}
        return asdict(self.scores) | extra


@dataclass(frozen=True)
class Split:
    """Per case: neighbours to edit with, and probes scored for specificity."""

    editing: list[list[tuple[str, str]]]
    probes: list[Probe]


def split_neighbours(loaded: LoadedModel, cases: list[CounterfactCase], per_fact: int) -> Split:
    """Choose up to ``per_fact`` editing neighbours per case, disjoint from scoring ones.

    A neighbour qualifies for editing when the unedited model gets it right: its true
    object is more likely than the new one (the same test neighbourhood success applies;
    a teacher-forced exact match is too rare on a small model to give most records a
    neighbour). The rest are scored for specificity.
    """
    pairs = [(i, s) for i, case in enumerate(cases) for s in case.neighbourhood]
    rows = []
    for i, (subject, template) in pairs:
        request = cases[i].request
        for obj in (request.old_object or "", request.new_object):
            rows.append(PromptSpec(template, subject, object_ids(loaded, obj)))
    scores = score_targets(loaded, rows)
    knows = [
        old.mean_nll < new.mean_nll for old, new in zip(scores[::2], scores[1::2], strict=True)
    ]
    editing: list[list[tuple[str, str]]] = [[] for _ in cases]
    scored: list[list[str]] = [[] for _ in cases]
    seen: list[set[str]] = [set() for _ in cases]
    for (index, (subject, template)), right in zip(pairs, knows, strict=True):
        prompt = template.format(subject)
        if right and len(editing[index]) < per_fact and prompt not in seen[index]:
            editing[index].append((subject, template))
        elif prompt not in {t.format(s) for s, t in editing[index]}:
            scored[index].append(prompt)
        seen[index].add(prompt)
    probes = [
        Probe(request=case.request, paraphrases=case.paraphrases, neighbourhood=tuple(scored[i]))
        for i, case in enumerate(cases)
    ]
    return Split(editing=editing, probes=probes)


def run_counterfact(
    loaded: LoadedModel,
    cases: list[CounterfactCase],
    methods: dict[str, EngineSettings],
    *,
    statistics: dict[int, KeyStatistics],
    contexts: list[str],
    fluency_texts: list[str],
    batch_size: int,
    neighbours_per_fact: int = 1,
) -> dict[str, MethodRow]:
    """Edit ``cases`` with each method and score them; the model is restored after each."""
    split = split_neighbours(loaded, cases, neighbours_per_fact)
    log.info(
        "%d of %d records have an editing neighbour the unedited model gets right",
        sum(1 for e in split.editing if e),
        len(cases),
    )
    reference = neighbourhood_reference(loaded, split.probes)
    base_perplexity = perplexity(loaded, fluency_texts)
    rows = {"unedited": _row(loaded, split, reference, base_perplexity, fluency_texts, 0.0, 0.0)}
    requests = [with_neighbours(c, n) for c, n in zip(cases, split.editing, strict=True)]
    for name, settings in methods.items():
        engine = EditEngine(loaded, settings, statistics, contexts)
        handles, passes, seconds = [], [], 0.0
        by_pass: list[float] = []  # optimisation seconds of pass i, summed over batches
        batches = range(0, len(requests), batch_size)
        for start in tqdm(batches, desc=name, unit="batch"):
            started = time.monotonic()
            result = engine.edit(requests[start : start + batch_size])
            handles.append(result.delta.apply(loaded))
            engine.remember(result)
            seconds += time.monotonic() - started
            passes += [len(r) for r in result.records]
            for index, timing in enumerate(result.timings):
                if index == len(by_pass):
                    by_pass.append(0.0)
                by_pass[index] += timing.optimisation_seconds
        try:
            rows[name] = _row(
                loaded,
                split,
                reference,
                base_perplexity,
                fluency_texts,
                sum(passes) / len(passes),
                seconds,
            )
        finally:
            for handle in reversed(handles):
                handle.revert()
        log.info("%s: %s", name, rows[name].flat())
        log.info(
            "%s: z optimisation seconds by IME pass: %s",
            name,
            ", ".join(f"{x:.0f}" for x in by_pass),
        )
    return rows


def _row(loaded, split, reference, base_perplexity, texts, iterations, seconds) -> MethodRow:  # noqa: ANN001
    scores = score_probes(loaded, split.probes, reference)
    return MethodRow(
        scores=scores,
        perplexity_ratio=perplexity(loaded, texts) / base_perplexity,
        iterations_mean=iterations,
        seconds=seconds,
    )


def format_table(rows: dict[str, MethodRow]) -> str:
    """A plain-text table: rows are methods, columns the KPIs."""
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
        values = [flat[column] for column in COLUMNS]
        lines.append(" | ".join([name, *(_cell(v) for v in values)]))
    return "\n".join(lines)


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def to_json(rows: dict[str, MethodRow], n: int) -> dict:
    """The numbers as ``{"n": N, "methods": {name: {column: value}}}``."""
    return {"n": n, "methods": {name: row.flat() for name, row in rows.items()}}
