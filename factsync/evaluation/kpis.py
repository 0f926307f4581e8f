"""Measuring a job's KPIs on the live model and the candidate (see ``factsync.kpis``).

Per edited fact: efficacy on its prompt, paraphrase prompts, and held-out neighbour
facts (which the live model answered correctly), each as ``success`` (NLL comparison of
the new and the old object) and ``accuracy`` (greedy answer); per model: retention of
facts applied by earlier versions and perplexity on held-out text against the base
model's. A fact whose old object is unknown (the live model answered nothing) counts
its greedy answer for both forms.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from factsync.evaluation.fluency import text_nll
from factsync.kpis.report import FACT_METRICS, FactScore, KpiReport, KpiValues, Metric, mean
from factsync.models.loading import LoadedModel
from factsync.models.scoring import TargetScore, score_targets
from factsync.models.text import PromptSpec, object_ids

Prompted = tuple[str, str]
"""(full prompt, object the model should answer)."""


@dataclass(frozen=True)
class EditCheck:
    """What to measure for one edited fact.

    Attributes:
        change_id: the fact change the edit carries out.
        relation: the fact's relation id.
        prompt: the edit prompt with the subject filled in.
        new_object: what the model must now answer.
        old_object: what the live model answered before, when it answered anything.
        paraphrases: other full prompts for the same fact.
        held_out: neighbour facts the edit must not change; never used for editing.
    """

    change_id: int
    relation: str
    prompt: str
    new_object: str
    old_object: str | None
    paraphrases: tuple[str, ...] = ()
    held_out: tuple[Prompted, ...] = ()


@dataclass(frozen=True)
class Measurement:
    """One model's raw scores on a job's checks.

    Attributes:
        facts: per check, its value of each of ``FACT_METRICS``.
        edit_probability: per check, the probability of the new object on its prompt.
        retention: share of earlier facts still stated.
        perplexity: on the fluency texts.
        retained: per retention probe, in order, whether the model still states it.
    """

    facts: list[dict[Metric, float | None]]
    edit_probability: list[float]
    retention: float | None
    perplexity: float
    retained: list[bool] = field(default_factory=list)


@dataclass(frozen=True)
class PartialMeasurement:
    """One model's raw scores on a part of a job's checks, probes and texts; parts
    scored apart (by several workers) combine into the ``Measurement`` of the whole.

    Attributes:
        facts: per check, its value of each of ``FACT_METRICS``.
        edit_probability: per check, the probability of the new object on its prompt.
        retained: per retention probe, whether the model still states it.
        text_nll: summed NLL of the fluency texts' tokens.
        text_tokens: how many tokens ``text_nll`` sums over.
    """

    facts: list[dict[Metric, float | None]]
    edit_probability: list[float]
    retained: list[bool]
    text_nll: float
    text_tokens: int


def measure(
    loaded: LoadedModel,
    checks: Sequence[EditCheck],
    retention: Sequence[Prompted],
    fluency_texts: Sequence[str],
) -> Measurement:
    """Score the model as it is now on ``checks``, ``retention`` and ``fluency_texts``."""
    return combine([measure_part(loaded, checks, retention, fluency_texts)])


def measure_part(
    loaded: LoadedModel,
    checks: Sequence[EditCheck],
    retention: Sequence[Prompted],
    fluency_texts: Sequence[str],
) -> PartialMeasurement:
    """Score the model as it is now on a part of a job's checks, probes and texts."""
    rows: list[PromptSpec] = []
    for check in checks:
        new_ids = object_ids(loaded, check.new_object)
        old_ids = object_ids(loaded, check.old_object) if check.old_object else None
        for prompt in (check.prompt, *check.paraphrases):
            rows.append(PromptSpec("{}", prompt, new_ids))
            if old_ids is not None:
                rows.append(PromptSpec("{}", prompt, old_ids))
        for prompt, obj in check.held_out:
            rows += [PromptSpec("{}", prompt, object_ids(loaded, obj)),
                     PromptSpec("{}", prompt, new_ids)]
    rows += [PromptSpec("{}", p, object_ids(loaded, o)) for p, o in retention]
    scores = iter(score_targets(loaded, rows) if rows else [])
    facts, edit_probability = [], []
    for check in checks:
        pairs = [_pair(scores, check.old_object is not None)
                 for _ in (check.prompt, *check.paraphrases)]
        edit_probability.append(pairs[0][0].probability)
        neighbours = [(next(scores), next(scores)) for _ in check.held_out]
        facts.append({
            Metric.EFFICACY_SUCCESS: _success(*pairs[0]),
            Metric.EFFICACY_ACCURACY: float(pairs[0][0].exact),
            Metric.PARAPHRASE_SUCCESS: mean(_success(*p) for p in pairs[1:]),
            Metric.PARAPHRASE_ACCURACY: mean(p[0].exact for p in pairs[1:]),
            Metric.NEIGHBOURHOOD_SUCCESS: mean(_success(*n) for n in neighbours),
            Metric.NEIGHBOURHOOD_ACCURACY: mean(n[0].exact for n in neighbours),
        })
    retained = [bool(next(scores).exact) for _ in retention]
    nll, tokens = text_nll(loaded, list(fluency_texts)) if fluency_texts else (0.0, 0)
    return PartialMeasurement(facts=facts, edit_probability=edit_probability,
                              retained=retained, text_nll=nll, text_tokens=tokens)


def combine(parts: Sequence[PartialMeasurement]) -> Measurement:
    """The measurement of the whole from its parts, in order.

    Raises:
        ValueError: the parts' fluency texts hold no scorable token.
    """
    tokens = sum(p.text_tokens for p in parts)
    if tokens == 0:
        raise ValueError("no texts to measure perplexity on")
    retained = [x for p in parts for x in p.retained]
    return Measurement(
        facts=[f for p in parts for f in p.facts],
        edit_probability=[x for p in parts for x in p.edit_probability],
        retention=mean(retained),
        perplexity=math.exp(sum(p.text_nll for p in parts) / tokens),
        retained=retained,
    )


def kpi_report(
    checks: Sequence[EditCheck],
    live: Measurement,
    candidate: Measurement,
    *,
    base_perplexity: float,
    canaries: int = 0,
) -> KpiReport:
    """The KPI report a policy judges: model-wide and per-relation values for both
    models, and the candidate's scores per fact (the gates are added once judged).

    The last ``canaries`` retention probes of both measurements are canary facts: they
    give the canary KPI, the others retention (``split_probes``).
    """
    everyone = list(range(len(checks)))
    by_relation = {}
    for relation in sorted({c.relation for c in checks}):
        members = [i for i, c in enumerate(checks) if c.relation == relation]
        by_relation[relation] = (_fact_values(candidate, members), _fact_values(live, members))
    facts = tuple(
        FactScore(change_id=check.change_id, relation=check.relation, prompt=check.prompt,
                  new_object=check.new_object, old_object=check.old_object,
                  probability=candidate.edit_probability[index],
                  values=KpiValues(candidate.facts[index]))
        for index, check in enumerate(checks)
    )
    return KpiReport(candidate=_model_values(candidate, everyone, base_perplexity, canaries),
                     live=_model_values(live, everyone, base_perplexity, canaries),
                     by_relation=by_relation, facts=facts)


def _pair(scores, has_old: bool) -> tuple[TargetScore, TargetScore | None]:  # noqa: ANN001
    new = next(scores)
    return new, next(scores) if has_old else None


def _success(right: TargetScore, other: TargetScore | None) -> float:
    """Whether ``right`` beats ``other`` on mean NLL; its greedy match without one."""
    return float(right.exact if other is None else right.mean_nll < other.mean_nll)


def split_probes(retained: Sequence[bool], canaries: int) -> tuple[float | None, float | None]:
    """Retention and the canary KPI from probes whose last ``canaries`` are canary facts:
    the share of each still stated, ``None`` for a part without probes."""
    cut = len(retained) - canaries
    return mean(retained[:cut]), mean(retained[cut:])


def _model_values(m: Measurement, members: list[int], base_perplexity: float,
                  canaries: int) -> KpiValues:
    retention, canary = split_probes(m.retained, canaries)
    return KpiValues({
        **_fact_values(m, members).values,
        Metric.RETENTION: retention,
        Metric.CANARY: canary,
        Metric.PERPLEXITY_RATIO: m.perplexity / base_perplexity,
    })


def _fact_values(m: Measurement, members: list[int]) -> KpiValues:
    return KpiValues({metric: mean(m.facts[i][metric] for i in members)
                      for metric in FACT_METRICS})
