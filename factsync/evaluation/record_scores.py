"""Efficacy, paraphrase and neighbourhood scores of edits, one value per record.

Every prompt is scored teacher-forced. A record's value of a metric is the mean over its
prompts of that kind, ``None`` when it has none, so a record with many prompts does not
outweigh one with few. Two conventions (``Dataset.token_accuracy`` and
``Dataset.neighbourhood_reference``):

COUNTERFACT:
- success: the right object has the lower mean per-token NLL: the new object against the
  old one on rewrite and paraphrase prompts; on neighbourhood prompts the neighbour's
  object (the old one) against the new one;
- accuracy: every token of the new object is the argmax (rewrite, paraphrase); on
  neighbourhood prompts, the argmax tokens along the neighbour's object are the ones the
  unedited model predicted (the post-edit prediction equals the pre-edit one).

ZsRE, as MEMIT's ``compute_rewrite_quality_zsre`` reports it:
- accuracy: the share of the new object's tokens that are the argmax (rewrite,
  paraphrase);
- success: as COUNTERFACT on rewrite and paraphrase prompts, the new object against the
  old one (the dataset's ``pred``);
- neighbourhood accuracy: the share of the neighbourhood answer's (``loc_ans``) tokens
  that are the edited model's argmax, the paper's specificity. It compares with the
  dataset's answer, not with the unedited model's prediction (EasyEdit's locality
  compares with the latter); neighbourhood success is not defined and is ``None``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from factsync.editing.requests import EditRequest
from factsync.evaluation.datasets import Dataset
from factsync.kpis.report import FACT_METRICS
from factsync.models.loading import LoadedModel
from factsync.models.scoring import TargetScore, score_targets
from factsync.models.text import PromptSpec, object_ids

METRICS = tuple(m.value for m in FACT_METRICS)
"""Every metric a record is scored on, whichever the dataset."""

Reference = dict[tuple[str, str], tuple[int, ...]]
"""(prompt, object) -> the unedited model's argmax tokens along the object."""


@dataclass(frozen=True)
class RecordProbe:
    """What to score for one record.

    Attributes:
        request: the edit; ``old_object`` must be set.
        paraphrases: full prompts that ask for the same fact in other words.
        neighbourhood: (full prompt, object) of facts the edit must not change; never a
            fact any edit was made with.
    """

    request: EditRequest
    paraphrases: tuple[str, ...] = ()
    neighbourhood: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.request.old_object is None:
            raise ValueError(f"probe for {self.request.subject!r} needs the old object")


def neighbourhood_reference(
    loaded: LoadedModel, probes: Sequence[RecordProbe], *, batch_size: int = 32
) -> Reference:
    """The model's predictions on every neighbourhood prompt of ``probes``."""
    keys = sorted({pair for probe in probes for pair in probe.neighbourhood})
    rows = [PromptSpec("{}", prompt, object_ids(loaded, obj)) for prompt, obj in keys]
    scores = score_targets(loaded, rows, batch_size=batch_size) if rows else []
    return {key: score.predicted for key, score in zip(keys, scores, strict=True)}


def score_records(
    loaded: LoadedModel,
    probes: Sequence[RecordProbe],
    dataset: Dataset,
    reference: Reference | None = None,
    *,
    batch_size: int = 32,
) -> dict[str, list[float | None]]:
    """Score the model as it is now: per metric of ``METRICS``, one value per probe.

    ``reference`` (``neighbourhood_reference`` of the unedited model) is needed when
    ``dataset`` judges the neighbourhood against the unedited model.
    """
    if dataset.neighbourhood_reference and reference is None:
        raise ValueError(f"{dataset.name} neighbourhood accuracy needs the unedited reference")
    pairs: set[tuple[str, str]] = set()
    for probe in probes:
        request = probe.request
        for prompt in (request.prompt, *probe.paraphrases):
            pairs |= {(prompt, request.new_object), (prompt, request.old_object or "")}
        for prompt, obj in probe.neighbourhood:
            pairs.add((prompt, obj))
            if dataset.neighbourhood_reference:
                pairs.add((prompt, request.new_object))
    order = sorted(pairs)
    ids = {obj: object_ids(loaded, obj) for obj in {obj for _, obj in order}}
    rows = [PromptSpec("{}", prompt, ids[obj]) for prompt, obj in order]
    scores = score_targets(loaded, rows, batch_size=batch_size) if rows else []
    scored = _Scored(dict(zip(order, scores, strict=True)), ids)
    values: dict[str, list[float | None]] = {metric: [] for metric in METRICS}
    for probe in probes:
        for metric, value in scored.record(probe, dataset, reference or {}).items():
            values[metric].append(value)
    return values


@dataclass(frozen=True)
class _Scored:
    """Teacher-forced scores by (prompt, object), and each object's token ids."""

    scores: dict[tuple[str, str], TargetScore]
    ids: dict[str, tuple[int, ...]]

    def record(
        self, probe: RecordProbe, dataset: Dataset, reference: Reference
    ) -> dict[str, float | None]:
        """One probe's value of each metric."""
        request = probe.request
        new, old = request.new_object, request.old_object or ""
        rewrite, paraphrases, hood = (request.prompt,), probe.paraphrases, probe.neighbourhood
        if dataset.neighbourhood_reference:
            hood_success = _mean([self._prefers(p, obj, new) for p, obj in hood])
            hood_accuracy = _mean(
                [float(self.scores[p, obj].predicted == reference[p, obj]) for p, obj in hood]
            )
        else:
            hood_success = None
            hood_accuracy = _mean([self._token_share(p, obj) for p, obj in hood])
        return {
            "efficacy_success": _mean([self._prefers(p, new, old) for p in rewrite]),
            "efficacy_accuracy": _mean([self._accuracy(p, new, dataset) for p in rewrite]),
            "paraphrase_success": _mean([self._prefers(p, new, old) for p in paraphrases]),
            "paraphrase_accuracy": _mean([self._accuracy(p, new, dataset) for p in paraphrases]),
            "neighbourhood_success": hood_success,
            "neighbourhood_accuracy": hood_accuracy,
        }

    def _prefers(self, prompt: str, winner: str, loser: str) -> float:
        """1.0 when ``winner`` has the lower mean per-token NLL after ``prompt``."""
        return float(self.scores[prompt, winner].mean_nll < self.scores[prompt, loser].mean_nll)

    def _accuracy(self, prompt: str, obj: str, dataset: Dataset) -> float:
        if dataset.token_accuracy:
            return self._token_share(prompt, obj)
        return float(self.scores[prompt, obj].exact)

    def _token_share(self, prompt: str, obj: str) -> float:
        """Share of ``obj``'s tokens that are the argmax after ``prompt`` (teacher forced)."""
        target = self.ids[obj]
        predicted = self.scores[prompt, obj].predicted
        return sum(p == t for p, t in zip(predicted, target, strict=True)) / len(target)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None
