"""The OPTIMIZATION stage: target hidden vectors z at the last edited layer.

For every fact, a delta added to the residual stream at the subject's last token of the
last edit layer is optimised so the model predicts the new object after the prompt
(under every context prefix), keeps its "{subject} is a" distribution (KL term) and,
with neighbour assistance (NME), keeps each neighbour's object when the same delta sits
at the neighbour's subject. The target is ``z = h + delta``.

All facts of a chunk share one padded batch with one delta per fact; the per-fact losses
are summed, so each fact's gradient is the one it would get alone. A fact stops as soon
as its target is likely enough, and its rows leave the batch. The frozen layers below
the edit point run once per chunk, not once per step.
"""

from __future__ import annotations

import math
from contextlib import ExitStack
from dataclasses import dataclass

import torch

from factsync.editing.requests import EditRequest
from factsync.models.hooks import add_at_positions, capture_hidden, frozen_parameters, replay_below
from factsync.models.loading import LoadedModel
from factsync.models.scoring import target_nll
from factsync.models.text import PromptSpec, encode, object_ids

KL_TEMPLATE = "{} is a"


@dataclass(frozen=True)
class TargetSettings:
    """Settings of the z optimisation.

    Attributes:
        steps: gradient steps per fact at most.
        learning_rate: Adam learning rate on the delta.
        kl_factor: weight of the KL term that keeps "{subject} is a" stable.
        weight_decay: weight of ``|delta|^2 / |h|^2``.
        clamp_norm_factor: the delta's norm is kept at most this times ``|h|``.
        stop_nll: a fact stops once its mean target NLL over the rewrite prompts is
            below this (nats per token; 0.05 is a probability of about 0.95).
        neighbour_weight: weight of the neighbours' NLL when NME is on.
        chunk_size: facts per padded batch (about 10 is fastest on CPU).
        replay_frozen: compute the layers below the edit point once per chunk.
    """

    steps: int = 25
    learning_rate: float = 0.5
    kl_factor: float = 0.0625
    weight_decay: float = 0.5
    clamp_norm_factor: float = 4.0
    stop_nll: float = 0.05
    neighbour_weight: float = 1.0
    chunk_size: int = 10
    replay_frozen: bool = True

    def __post_init__(self) -> None:
        for name in ("steps", "chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("learning_rate", "clamp_norm_factor", "stop_nll"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


@dataclass
class TargetResult:
    """Targets for a list of facts, in request order.

    Attributes:
        z: (facts, hidden) target hidden vectors at the layer.
        initial: (facts, hidden) hidden vectors before optimisation.
        probability: per fact, the new object's per-token probability on the bare prompt
            with its final delta: what the OPTIMIZATION stage achieved.
        steps: per fact, gradient steps taken.
    """

    z: torch.Tensor
    initial: torch.Tensor
    probability: list[float]
    steps: list[int]


@dataclass
class _Rows:
    """The rows of one chunk's batch and what each one is for."""

    specs: list[PromptSpec]
    fact: list[int]
    kind: list[str]  # "rewrite", "kl" or "neighbour"
    bare: list[int]  # per fact, its rewrite row without context prefix


def optimise_targets(
    loaded: LoadedModel,
    requests: list[EditRequest],
    layer: int,
    contexts: list[str],
    settings: TargetSettings,
    *,
    use_neighbours: bool,
) -> TargetResult:
    """Optimise z for each request at decoder ``layer`` (the last edit layer).

    ``contexts`` must start with the bare context ``""``. Leaves the model unchanged.
    """
    if not contexts or contexts[0] != "":
        raise ValueError("contexts must start with the bare context ''")
    parts = [
        _optimise_chunk(
            loaded, requests[i : i + settings.chunk_size], layer, contexts, settings, use_neighbours
        )
        for i in range(0, len(requests), settings.chunk_size)
    ]
    return TargetResult(
        z=torch.cat([p.z for p in parts]),
        initial=torch.cat([p.initial for p in parts]),
        probability=[x for p in parts for x in p.probability],
        steps=[x for p in parts for x in p.steps],
    )


def _build_rows(
    loaded: LoadedModel, requests: list[EditRequest], contexts: list[str], use_neighbours: bool
) -> _Rows:
    rows = _Rows(specs=[], fact=[], kind=[], bare=[])

    def add(spec: PromptSpec, fact: int, kind: str) -> None:
        rows.specs.append(spec)
        rows.fact.append(fact)
        rows.kind.append(kind)

    for fact, request in enumerate(requests):
        new_ids = object_ids(loaded, request.new_object)
        rows.bare.append(len(rows.specs))
        for context in contexts:
            add(PromptSpec(request.template, request.subject, new_ids, context), fact, "rewrite")
        add(PromptSpec(KL_TEMPLATE, request.subject), fact, "kl")
        if use_neighbours:
            for neighbour in request.neighbours:
                ids = object_ids(loaded, neighbour.object)
                add(PromptSpec(neighbour.template, neighbour.subject, ids), fact, "neighbour")
    return rows


def _optimise_chunk(
    loaded: LoadedModel,
    requests: list[EditRequest],
    layer: int,
    contexts: list[str],
    settings: TargetSettings,
    use_neighbours: bool,
) -> TargetResult:
    device = loaded.device
    rows = _build_rows(loaded, requests, contexts, use_neighbours)
    batch = encode(loaded, rows.specs)
    fact_of_row = torch.tensor(rows.fact, device=device)
    kind = {
        k: torch.tensor([x == k for x in rows.kind], device=device)
        for k in ("rewrite", "kl", "neighbour")
    }

    with torch.no_grad(), capture_hidden(loaded, [layer]) as captured:
        # Reference next-token distributions; the KL term keeps "{subject} is a" ones.
        _, _, _, kl_reference = target_nll(loaded, batch)
    hidden = captured[layer].detach()  # (rows, tokens, hidden)
    initial = hidden[torch.tensor(rows.bare, device=device), batch.subject_last[rows.bare]].float()

    deltas = [torch.zeros_like(initial[f], requires_grad=True) for f in range(len(requests))]
    optimiser = torch.optim.Adam(deltas, lr=settings.learning_rate)
    max_norm = settings.clamp_norm_factor * initial.norm(dim=1)
    active = list(range(len(requests)))
    probability = [0.0] * len(requests)
    steps = [0] * len(requests)
    state: dict[str, torch.Tensor] = {}

    def deltas_for_rows() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return state["rows"], state["positions"], state["vectors"]

    with ExitStack() as stack:
        stack.enter_context(frozen_parameters(loaded.model))
        replay = (
            stack.enter_context(replay_below(loaded, layer)) if settings.replay_frozen else None
        )
        stack.enter_context(add_at_positions(loaded, layer, deltas_for_rows))
        for step in range(settings.steps + 1):
            chosen = torch.nonzero(torch.isin(fact_of_row, torch.tensor(active, device=device)))
            chosen = chosen.squeeze(1)  # (active rows,)
            sub = batch.select(chosen)
            local_fact = fact_of_row[chosen]
            state["rows"] = torch.arange(len(chosen), device=device)
            state["positions"] = sub.subject_last
            slot = torch.full((len(requests),), -1, dtype=torch.long, device=device)
            slot[active] = torch.arange(len(active), device=device)
            # Only active deltas enter the graph, so finished ones get no gradient at all.
            state["vectors"] = torch.stack([deltas[f] for f in active])[slot[local_fact]]
            if replay is not None:
                replay.replay = hidden[chosen]
            nll, _, _, log_probs = target_nll(loaded, sub)  # (active rows,), (active rows, vocab)
            kl_rows = kl_reference[chosen]
            kl = (kl_rows.exp() * (kl_rows - log_probs)).sum(dim=-1)  # (active rows,)

            losses, finished = [], []
            for fact in active:
                mine = local_fact == fact
                rewrite_nll = nll[mine & kind["rewrite"][chosen]].mean()
                loss = rewrite_nll + settings.kl_factor * kl[mine & kind["kl"][chosen]].sum()
                neighbours = mine & kind["neighbour"][chosen]
                if neighbours.any():
                    loss = loss + settings.neighbour_weight * nll[neighbours].mean()
                decay = deltas[fact].norm() ** 2 / initial[fact].norm() ** 2
                losses.append(loss + settings.weight_decay * decay)
                bare_row = int(torch.nonzero(chosen == rows.bare[fact])[0, 0])
                probability[fact] = math.exp(-float(nll[bare_row].detach()))
                steps[fact] = step
                if float(rewrite_nll.detach()) < settings.stop_nll or step == settings.steps:
                    finished.append(fact)
            still = [f for f in active if f not in finished]
            if not still:
                break
            optimiser.zero_grad(set_to_none=True)
            kept = [loss for fact, loss in zip(active, losses, strict=True) if fact in still]
            torch.stack(kept).sum().backward()
            for fact in finished:
                # A zero gradient, unlike None, would let Adam's momentum move the fact.
                deltas[fact].grad = None
            optimiser.step()
            with torch.no_grad():
                for fact in still:
                    norm = deltas[fact].norm()
                    if norm > max_norm[fact]:
                        deltas[fact].mul_(max_norm[fact] / norm)
            active = still

    z = initial + torch.stack([d.detach() for d in deltas])
    return TargetResult(z=z, initial=initial, probability=probability, steps=steps)
