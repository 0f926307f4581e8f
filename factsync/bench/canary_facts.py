"""Canary facts of a bench: facts the unedited model knows and no edit touches.

A canary holds while the model finds its old object (COUNTERFACT's true object, ZsRE's
``pred``) more likely than its new one after the rewrite prompt, by mean per-token NLL:
the test of efficacy success, turned around.
"""

from __future__ import annotations

from factsync.editing.requests import EditRequest
from factsync.models.loading import LoadedModel
from factsync.models.scoring import score_targets
from factsync.models.text import PromptSpec, object_ids


def canary_holds(loaded: LoadedModel, requests: list[EditRequest]) -> list[float]:
    """Per request, 1.0 where the model prefers its old object to its new one, else 0.0."""
    rows = []
    for request in requests:
        if request.old_object is None:
            raise ValueError(f"canary {request.prompt!r} needs its old object")
        for obj in (request.old_object, request.new_object):
            rows.append(PromptSpec(request.template, request.subject, object_ids(loaded, obj)))
    scores = score_targets(loaded, rows) if rows else []
    pairs = zip(scores[::2], scores[1::2], strict=True)
    return [float(old.mean_nll < new.mean_nll) for old, new in pairs]


def pick_canaries(loaded: LoadedModel, requests: list[EditRequest]) -> list[EditRequest]:
    """The requests whose old object ``loaded`` (the unedited model) already prefers."""
    holds = canary_holds(loaded, requests)
    return [request for request, held in zip(requests, holds, strict=True) if held]
