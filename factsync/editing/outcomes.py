"""Whether an edit has taken: the test IME stops on."""

from __future__ import annotations

from dataclasses import dataclass

from factsync.editing.requests import EditRequest
from factsync.models.loading import LoadedModel
from factsync.models.scoring import TargetScore, score_targets
from factsync.models.text import PromptSpec, object_ids
from factsync.typed_yaml import Choice


class TookRule(Choice):
    """What an edit must do on each prompt it is checked on to have taken."""

    WINS = "wins"
    MOST_PROBABLE = "most_probable"
    MOST_PROBABLE_BARE = "most_probable_bare"


@dataclass(frozen=True)
class EditOutcomes:
    """Per request, in order.

    Attributes:
        took: the new object passes the took rule on the bare prompt and under every
            context prefix (and on every phrasing, when they are checked).
        probability: the new object's per-token probability on the bare prompt.
    """

    took: list[bool]
    probability: list[float]


def edit_outcomes(
    loaded: LoadedModel, requests: list[EditRequest], contexts: list[str],
    rule: TookRule = TookRule.WINS, phrasings: bool = False,
) -> EditOutcomes:
    """Score ``requests`` on the model as it is now.

    Under ``TookRule.WINS`` the new object wins a prompt when its mean per-token NLL is
    below the old object's; with no old object known, when every one of its tokens is
    the model's argmax. ``TookRule.MOST_PROBABLE`` asks for both: every new-object token
    the argmax, and a lower NLL than the old object's when it is known.
    ``TookRule.MOST_PROBABLE_BARE`` asks ``MOST_PROBABLE`` on the bare prompt, the one
    a served model answers, and ``WINS`` under the context prefixes and on phrasings.
    ``phrasings`` checks each request's phrasings, bare, as well.
    ``contexts`` must start with the bare context ``""``.
    """
    if not contexts or contexts[0] != "":
        raise ValueError("contexts must start with the bare context ''")
    rows: list[PromptSpec] = []
    counts: list[int] = []
    for request in requests:
        objects = [request.new_object] + ([request.old_object] if request.old_object else [])
        prompts = _checked_prompts(request, contexts, phrasings)
        counts.append(len(prompts))
        for template, context in prompts:
            for obj in objects:
                rows.append(
                    PromptSpec(template, request.subject, object_ids(loaded, obj), context)
                )
    scores = iter(score_targets(loaded, rows))
    took, probability = [], []
    for request, count in zip(requests, counts, strict=True):
        wins = []
        for index in range(count):
            new = next(scores)
            old = next(scores) if request.old_object else None
            wins.append(_passes(new, old, _prompt_rule(rule, bare=index == 0)))
            if index == 0:
                probability.append(new.probability)
        took.append(all(wins))
    return EditOutcomes(took=took, probability=probability)


def _checked_prompts(request: EditRequest, contexts: list[str],
                     phrasings: bool) -> list[tuple[str, str]]:
    """(template, context) pairs a request is checked on, the bare prompt first."""
    prompts = [(request.template, context) for context in contexts]
    if phrasings:
        prompts += [(phrasing, "") for phrasing in request.phrasings]
    return prompts


def _prompt_rule(rule: TookRule, *, bare: bool) -> TookRule:
    """The rule one checked prompt is held to under ``rule``."""
    if rule is TookRule.MOST_PROBABLE_BARE:
        return TookRule.MOST_PROBABLE if bare else TookRule.WINS
    return rule


def _passes(new: TargetScore, old: TargetScore | None, rule: TookRule) -> bool:
    if old is None:
        return new.exact
    beats_old = new.mean_nll < old.mean_nll
    if rule is TookRule.MOST_PROBABLE:
        return beats_old and new.exact
    return beats_old
