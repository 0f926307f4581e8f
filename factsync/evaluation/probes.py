"""Efficacy, paraphrase and neighbourhood scores of edits (COUNTERFACT conventions).

For each edit, every prompt is scored teacher-forced on the new and the old object:
- "success": the right object is more likely (mean per-token NLL) than the other one:
  the new object on rewrite and paraphrase prompts, the old one on neighbourhood prompts.
- "accuracy": on rewrite and paraphrase prompts, every token of the new object is the
  model's argmax; on neighbourhood prompts, the argmax tokens along the old object are
  the ones the unedited model predicted (the post-edit prediction equals the pre-edit one).
Per-edit means are averaged over edits, so an edit with many prompts does not dominate.
"""

from __future__ import annotations

from dataclasses import dataclass

from factsync.editing.requests import EditRequest
from factsync.models.loading import LoadedModel
from factsync.models.scoring import TargetScore, score_targets
from factsync.models.text import PromptSpec, object_ids


@dataclass(frozen=True)
class Probe:
    """What to score for one edit.

    Attributes:
        request: the edit; ``old_object`` must be set.
        paraphrases: full prompts that ask for the same fact in other words.
        neighbourhood: full prompts about other subjects whose object is ``old_object``
            and must stay so. Never the neighbours the edit was made with.
    """

    request: EditRequest
    paraphrases: tuple[str, ...] = ()
    neighbourhood: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.request.old_object is None:
            raise ValueError(f"probe for {self.request.subject!r} needs the old object")


@dataclass(frozen=True)
class ProbeScores:
    """KPIs over a set of probes, each in [0, 1]; ``None`` where nothing was scored."""

    efficacy_success: float
    efficacy_accuracy: float
    paraphrase_success: float | None
    paraphrase_accuracy: float | None
    neighbourhood_success: float | None
    neighbourhood_accuracy: float | None


Reference = dict[tuple[str, str], tuple[int, ...]]
"""(prompt, old object) -> the unedited model's argmax tokens along the old object."""


def neighbourhood_reference(
    loaded: LoadedModel, probes: list[Probe], *, batch_size: int = 32
) -> Reference:
    """The unedited model's predictions on every neighbourhood prompt of ``probes``."""
    keys = [(prompt, p.request.old_object) for p in probes for prompt in p.neighbourhood]
    rows = [PromptSpec("{}", prompt, object_ids(loaded, old)) for prompt, old in keys]
    scores = score_targets(loaded, rows, batch_size=batch_size) if rows else []
    return {key: score.predicted for key, score in zip(keys, scores, strict=True)}


def score_probes(
    loaded: LoadedModel,
    probes: list[Probe],
    reference: Reference | None = None,
    *,
    batch_size: int = 32,
) -> ProbeScores:
    """Score the model as it is now on ``probes``.

    ``reference`` (from ``neighbourhood_reference`` on the unedited model) is needed for
    neighbourhood accuracy; without it that KPI is ``None``.
    """
    if not probes:
        raise ValueError("no probes to score")
    rows: list[PromptSpec] = []
    layout: list[tuple[int, str, str]] = []  # (probe, kind, prompt) per pair of rows
    for index, probe in enumerate(probes):
        request = probe.request
        new_ids = object_ids(loaded, request.new_object)
        old_ids = object_ids(loaded, request.old_object or "")
        prompts = [("rewrite", request.prompt)]
        prompts += [("paraphrase", p) for p in probe.paraphrases]
        prompts += [("neighbourhood", p) for p in probe.neighbourhood]
        for kind, prompt in prompts:
            rows += [PromptSpec("{}", prompt, new_ids), PromptSpec("{}", prompt, old_ids)]
            layout.append((index, kind, prompt))
    scores = score_targets(loaded, rows, batch_size=batch_size)
    success: dict[str, list[list[float]]] = {}
    accuracy: dict[str, list[list[float]]] = {}
    for pair, (index, kind, prompt) in enumerate(layout):
        new, old = scores[2 * pair], scores[2 * pair + 1]
        hit, exact = _judge(kind, new, old, prompt, probes[index].request, reference)
        success.setdefault(kind, [[] for _ in probes])[index].append(hit)
        if exact is not None:
            accuracy.setdefault(kind, [[] for _ in probes])[index].append(exact)
    return ProbeScores(
        efficacy_success=_mean_of_means(success.get("rewrite")) or 0.0,
        efficacy_accuracy=_mean_of_means(accuracy.get("rewrite")) or 0.0,
        paraphrase_success=_mean_of_means(success.get("paraphrase")),
        paraphrase_accuracy=_mean_of_means(accuracy.get("paraphrase")),
        neighbourhood_success=_mean_of_means(success.get("neighbourhood")),
        neighbourhood_accuracy=_mean_of_means(accuracy.get("neighbourhood")),
    )


def _judge(
    kind: str,
    new: TargetScore,
    old: TargetScore,
    prompt: str,
    request: EditRequest,
    reference: Reference | None,
) -> tuple[float, float | None]:
    if kind != "neighbourhood":
        return float(new.mean_nll < old.mean_nll), float(new.exact)
    hit = float(old.mean_nll < new.mean_nll)
    if reference is None:
        return hit, None
    return hit, float(reference[(prompt, request.old_object or "")] == old.predicted)


def _mean_of_means(groups: list[list[float]] | None) -> float | None:
    """Mean over groups of each non-empty group's mean."""
    means = [sum(g) / len(g) for g in groups or [] if g]
    return sum(means) / len(means) if means else None
