"""Whether an edit has taken: the test IME stops on."""

from __future__ import annotations

from dataclasses import dataclass

from factsync.editing.requests import EditRequest
from factsync.models.loading import LoadedModel
from factsync.models.scoring import score_targets
from factsync.models.text import PromptSpec, object_ids


@dataclass(frozen=True)
class EditOutcomes:
    """Per request, in order.

    Attributes:
        took: the new object wins on the bare prompt and under every context prefix.
        probability: the new object's per-token probability on the bare prompt.
    """

    took: list[bool]
    probability: list[float]


def edit_outcomes(
    loaded: LoadedModel, requests: list[EditRequest], contexts: list[str]
) -> EditOutcomes:
    """Score ``requests`` on the model as it is now.

    The new object wins a prompt when its mean per-token NLL is below the old object's;
    with no old object known, when every one of its tokens is the model's argmax.
    ``contexts`` must start with the bare context ``""``.
    """
    if not contexts or contexts[0] != "":
        raise ValueError("contexts must start with the bare context ''")
    rows: list[PromptSpec] = []
    for request in requests:
        objects = [request.new_object] + ([request.old_object] if request.old_object else [])
        for context in contexts:
            for obj in objects:
                rows.append(
                    PromptSpec(request.template, request.subject, object_ids(loaded, obj), context)
                )
    scores = iter(score_targets(loaded, rows))
    took, probability = [], []
    for request in requests:
        wins = []
        for context in contexts:
            new = next(scores)
            if request.old_object:
                wins.append(new.mean_nll < next(scores).mean_nll)
            else:
                wins.append(new.exact)
            if context == "":
                probability.append(new.probability)
        took.append(all(wins))
    return EditOutcomes(took=took, probability=probability)
