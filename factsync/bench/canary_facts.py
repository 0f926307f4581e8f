"""Canary facts of a bench: facts the unedited model knows and no edit touches.

Two kinds. A record canary (a dataset record after the edited ones) holds while the
model finds its old object (COUNTERFACT's true object, ZsRE's ``pred``) more likely
than its new one after the rewrite prompt, by mean per-token NLL: the test of efficacy
success, turned around. A daemon canary (the built-in set the daemon's monitor watches)
holds while the model's greedy answer is still its object, the monitor's own test.
"""

from __future__ import annotations

from collections.abc import Sequence

from factsync.editing.requests import EditRequest
from factsync.evaluation.cases import EvalCase
from factsync.evaluation.kpis import Prompted
from factsync.facts.canaries import CANDIDATE_CANARIES
from factsync.facts.catalog import RelationCatalog
from factsync.facts.guards import GUARD_FACTS
from factsync.jobs.canaries import CanaryFact
from factsync.jobs.preparation import states
from factsync.models.loading import LoadedModel
from factsync.models.scoring import score_targets, stated_facts
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


def daemon_canaries(loaded: LoadedModel, edited: Sequence[EvalCase] = ()) -> list[Prompted]:
    """The daemon's built-in canaries, as (prompt, object), that ``loaded`` states and
    no case of ``edited`` rewrites (``unrewritten``)."""
    return [(template.format(subject), obj)
            for template, subject, obj in daemon_canary_facts(loaded, edited)]


def daemon_canary_facts(loaded: LoadedModel,
                        edited: Sequence[EvalCase] = ()) -> list[tuple[str, str, str]]:
    """``daemon_canaries`` as (template, subject, object), for what reads the subject."""
    return _stated_unrewritten(loaded, CANDIDATE_CANARIES, edited)


def well_known_facts(loaded: LoadedModel, edited: Sequence[EvalCase] = ()) -> list[Prompted]:
    """The built-in guard facts (``facts.guards``) that ``loaded`` states and no case of
    ``edited`` rewrites, as (prompt, object): well-known facts apart from the canaries,
    which no canary gate reads or repairs (a policy that holds guard facts holds them)."""
    return [(template.format(subject), obj)
            for template, subject, obj in _stated_unrewritten(loaded, GUARD_FACTS, edited)]


def _stated_unrewritten(loaded: LoadedModel, candidates: Sequence[tuple[str, str, str]],
                        edited: Sequence[EvalCase]) -> list[tuple[str, str, str]]:
    """The (template, subject, object) of the (subject, relation id, object)
    ``candidates`` no case of ``edited`` rewrites and ``loaded`` states."""
    facts = RelationCatalog.built_in().templated(unrewritten(candidates, edited))
    return stated_facts(loaded, facts)


def unrewritten(candidates: Sequence[tuple[str, str, str]],
                edited: Sequence[EvalCase]) -> list[tuple[str, str, str]]:
    """The (subject, relation id, object) ``candidates`` no case of ``edited`` rewrites,
    as the daemon leaves out the canaries its feed changes: a case rewrites those of its
    subject and relation, or of its subject alone where its dataset names no relation."""
    rewritten = {(case.request.subject, case.relation) for case in edited}
    return [(subject, relation, obj) for subject, relation, obj in candidates
            if not {(subject, relation), (subject, None)} & rewritten]


def canary_repairs(record_canaries: Sequence[EditRequest],
                   stated: Sequence[tuple[str, str, str]]) -> list[EditRequest]:
    """Per canary, record canaries first and then the daemon canaries ``stated`` as
    (template, subject, object), the edit that states it again: its object, the one the
    unedited model held, as the new object."""
    return ([request.reverted() for request in record_canaries]
            + [CanaryFact(subject, template, obj).restatement()
               for template, subject, obj in stated])


def canaries_stated(loaded: LoadedModel, pairs: list[Prompted]) -> list[float]:
    """Per (prompt, object), 1.0 where the model's greedy answer is still the object."""
    return [float(stated) for stated in states(loaded, pairs)]
