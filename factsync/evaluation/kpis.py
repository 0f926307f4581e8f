"""The KPIs a candidate version is judged on, measured on the live and the candidate model.

- edit_success: share of edited facts whose new object is the model's greedy answer
  (teacher-forced exact match on the fact's prompt);
- paraphrase_success: share of paraphrase prompts where the new object is more likely
  than the old one, averaged per fact;
- neighbourhood_preservation: share of held-out neighbour facts (which the live model
  answered correctly) that the model still answers correctly, averaged per fact;
- retention: share of facts applied by earlier versions that the model still states;
- perplexity_ratio: perplexity on a held-out text set against the base model's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from factsync.evaluation.fluency import perplexity
from factsync.models.loading import LoadedModel
from factsync.models.scoring import score_targets
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
    """One model's raw scores on a job's checks."""

    edit_exact: list[bool]
    edit_probability: list[float]
    paraphrase: list[float | None]
    neighbourhood: list[float | None]
    retention: float | None
    perplexity: float


def measure(
    loaded: LoadedModel,
    checks: Sequence[EditCheck],
    retention: Sequence[Prompted],
    fluency_texts: Sequence[str],
) -> Measurement:
    """Score the model as it is now on ``checks``, ``retention`` and ``fluency_texts``."""
    rows: list[PromptSpec] = []
    for check in checks:
        rows.append(PromptSpec("{}", check.prompt, object_ids(loaded, check.new_object)))
        for prompt in check.paraphrases:
            rows.append(PromptSpec("{}", prompt, object_ids(loaded, check.new_object)))
            if check.old_object:
                rows.append(PromptSpec("{}", prompt, object_ids(loaded, check.old_object)))
        rows += [PromptSpec("{}", p, object_ids(loaded, o)) for p, o in check.held_out]
    rows += [PromptSpec("{}", p, object_ids(loaded, o)) for p, o in retention]
    scores = iter(score_targets(loaded, rows) if rows else [])
    edit_exact, edit_probability, paraphrase, neighbourhood = [], [], [], []
    for check in checks:
        edit = next(scores)
        edit_exact.append(edit.exact)
        edit_probability.append(edit.probability)
        hits = []
        for _ in check.paraphrases:
            new = next(scores)
            hits.append(new.mean_nll < next(scores).mean_nll if check.old_object else new.exact)
        paraphrase.append(_mean(hits))
        neighbourhood.append(_mean([next(scores).exact for _ in check.held_out]))
    retained = [next(scores).exact for _ in retention]
    return Measurement(
        edit_exact=edit_exact,
        edit_probability=edit_probability,
        paraphrase=paraphrase,
        neighbourhood=neighbourhood,
        retention=_mean(retained),
        perplexity=perplexity(loaded, list(fluency_texts)),
    )


def kpi_report(
    checks: Sequence[EditCheck],
    live: Measurement,
    candidate: Measurement,
    *,
    base_perplexity: float,
) -> dict:
    """The KPI report a policy judges: model-wide and per-relation values for both models.

    ``{"candidate": {metric: value}, "live": {...}, "by_relation": {relation:
    {"candidate": {...}, "live": {...}}}, "facts": [per-fact scores]}``; a value is
    ``None`` when there was nothing to measure.
    """
    relations = sorted({c.relation for c in checks})
    report = {
        "candidate": _summary(candidate, range(len(checks)), base_perplexity),
        "live": _summary(live, range(len(checks)), base_perplexity),
        "by_relation": {},
        "facts": [],
    }
    for relation in relations:
        members = [i for i, c in enumerate(checks) if c.relation == relation]
        report["by_relation"][relation] = {
            "candidate": _fact_metrics(candidate, members),
            "live": _fact_metrics(live, members),
        }
    for index, check in enumerate(checks):
        report["facts"].append(
            {
                **{k: v for k, v in asdict(check).items() if k in ("change_id", "relation")},
                "prompt": check.prompt,
                "new_object": check.new_object,
                "old_object": check.old_object,
                "edit_success": candidate.edit_exact[index],
                "probability": round(candidate.edit_probability[index], 4),
                "paraphrase_success": candidate.paraphrase[index],
                "neighbourhood_preservation": candidate.neighbourhood[index],
            }
        )
    return report


def _summary(m: Measurement, members: range, base_perplexity: float) -> dict:
    return {
        **_fact_metrics(m, list(members)),
        "retention": m.retention,
        "perplexity_ratio": m.perplexity / base_perplexity,
    }


def _fact_metrics(m: Measurement, members: list[int]) -> dict:
    return {
        "edit_success": _mean([float(m.edit_exact[i]) for i in members]),
        "paraphrase_success": _mean([m.paraphrase[i] for i in members]),
        "neighbourhood_preservation": _mean([m.neighbourhood[i] for i in members]),
    }


def _mean(values: Sequence[float | bool | None]) -> float | None:
    present = [float(v) for v in values if v is not None]
    return sum(present) / len(present) if present else None
