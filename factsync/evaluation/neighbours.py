"""NME editing neighbours for benchmark cases, and the neighbourhood left to score.

A neighbourhood fact qualifies for editing when the unedited model gets it right: its
object is more likely (mean per-token NLL) than the edit's new object; a teacher-forced
exact match is too rare on a small model to give most records a neighbour. Each case
takes up to ``per_fact`` qualifying facts from its donor's neighbourhood, in order.

A prompt that any case edits with is scored for no case, compared by its full text: an
edit made to keep a prompt's answer must not be credited for keeping it, and records
share neighbourhood prompts (COUNTERFACT: six in its first 50 records).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from factsync.editing.requests import Neighbour
from factsync.evaluation.cases import EvalCase
from factsync.models.loading import LoadedModel
from factsync.models.scoring import score_targets
from factsync.models.text import PromptSpec, object_ids


@dataclass(frozen=True)
class NeighbourSplit:
    """Per case: the neighbours it edits with, and the neighbourhood it is scored on.

    Attributes:
        editing: per case, the facts its edit must keep (NME neighbours).
        scored: per case, (full prompt, object) of its own neighbourhood facts that no
            case edits with, each prompt once.
    """

    editing: list[tuple[Neighbour, ...]]
    scored: list[tuple[tuple[str, str], ...]]


def split_neighbours(
    loaded: LoadedModel,
    cases: Sequence[EvalCase],
    donors: Sequence[EvalCase | None],
    per_fact: int,
    *,
    contrast: Sequence[Sequence[Neighbour]] = (),
    contrast_per_fact: int = 0,
    batch_size: int = 32,
) -> NeighbourSplit:
    """Choose up to ``per_fact`` editing neighbours per case and what is left to score.

    ``donors[i]`` is the case whose neighbourhood offers case ``i`` its neighbours (it
    may be case ``i`` itself; ``None``: no neighbours). ``contrast[i]``, when given,
    offers case ``i`` further candidates (``contrast.contrast_offers``), of which it
    edits with up to ``contrast_per_fact`` more. Call on the unedited model.
    """
    if len(donors) != len(cases):
        raise ValueError(f"{len(donors)} donors for {len(cases)} cases")
    if contrast and len(contrast) != len(cases):
        raise ValueError(f"contrast offers for {len(contrast)} of {len(cases)} cases")
    offers = [() if donor is None else donor.neighbourhood_facts() for donor in donors]
    contrasts = list(contrast) if contrast else [()] * len(cases)
    rows = [
        PromptSpec(fact.template, fact.subject, object_ids(loaded, obj))
        for case, mine, theirs in zip(cases, offers, contrasts, strict=True)
        for fact in (*mine, *theirs)
        for obj in (fact.object, case.request.new_object)
    ]
    scores = score_targets(loaded, rows, batch_size=batch_size) if rows else []
    knows = iter(
        keep.mean_nll < new.mean_nll for keep, new in zip(scores[::2], scores[1::2], strict=True)
    )
    editing = []
    for mine, theirs in zip(offers, contrasts, strict=True):
        chosen: dict[str, Neighbour] = {}
        for facts, wanted in ((mine, per_fact), (theirs, contrast_per_fact)):
            taken = 0
            for fact in facts:
                prompt = fact.template.format(fact.subject)
                if next(knows) and taken < wanted and prompt not in chosen:
                    chosen[prompt] = fact
                    taken += 1
        editing.append(tuple(chosen.values()))
    used = {n.template.format(n.subject) for neighbours in editing for n in neighbours}
    scored = []
    for case in cases:
        own: dict[str, str] = {}
        for fact in case.neighbourhood_facts():
            prompt = fact.template.format(fact.subject)
            if prompt not in used:
                own.setdefault(prompt, fact.object)
        scored.append(tuple(own.items()))
    return NeighbourSplit(editing=editing, scored=scored)
