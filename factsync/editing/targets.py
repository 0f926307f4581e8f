"""The OPTIMIZATION stage: target hidden vectors z at the last edited layer.

For every fact, a delta added to the residual stream at the subject's last token of the
last edit layer is optimised so the model predicts the new object after the prompt
(under every context prefix), keeps its "{subject} is a" distribution (KL term) and,
with neighbour assistance (NME), keeps each neighbour's next-token distribution as it
was before the edit (a KL term at about the weight of one rewrite prompt among seven)
when the same delta sits at the neighbour's subject. With ``train_phrasings``, the
request's other phrasings of its relation are rewrite prompts too (without context
prefix), so the delta is not fitted to one wording alone. The target is ``z = h + delta``.
The vocabulary projection runs only where a logit is read: on the new object's tokens
of rewrite prompts, and after the prompts the KL terms watch.

All facts of a chunk share each step's passes with one delta per fact (rows of like
width run together, so short rows are not padded to the longest); the per-fact losses
are summed, so each fact's gradient is the one it would get alone. A fact stops as soon
as its target is likely enough and its neighbours still predict what they predicted
before the edit (their most likely next token), or have not come back within
``patience`` steps, and its rows leave the
batch. The frozen layers below the edit point run once per chunk, not once per step,
and so do the tokens before each row's subject (``models.prefix``): every step runs
only the subject's last token and what follows it, in the layers above the edit point.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from typing import Protocol

import torch

from factsync.editing.cancellation import Cancelled, never, stop_if
from factsync.editing.delta import ModelDelta
from factsync.editing.requests import EditRequest
from factsync.models.hooks import add_at_positions, capture_hidden, frozen_parameters, replay_below
from factsync.models.loading import LoadedModel
from factsync.models.prefix import (
    align_at_subject,
    full_forward,
    prefix_states,
    suffix_forward,
    width_groups,
)
from factsync.models.scoring import BatchScores, batch_scores
from factsync.models.text import PromptSpec, encode, object_ids
from factsync.typed_yaml import Choice

KL_TEMPLATE = "{} is a"
GROUP_OVERHEAD = 96
"""What one more pass costs, in padded token rows, when a step splits its rows into
groups of like width (``models.prefix.width_groups``). Timed on the first 10 COUNTERFACT
dev facts under the natural-phrasings policy on a 2-core CPU, one run each: 8, 32, 64,
96 and 160 took 66, 56, 56, 53 and 61 s, one padded batch 67 s."""


class StepRule(Choice):
    """How each gradient step moves a fact's delta."""

    ADAM = "adam"
    NORMALISED = "normalised"
    NATURAL = "natural"


@dataclass(frozen=True)
class TargetSettings:
    """Settings of the z optimisation.

    Attributes:
        steps: gradient steps per fact at most.
        learning_rate: Adam's learning rate on the delta; under the ``normalised`` step
            rule, the length of each step as a fraction of ``|h|``.
        kl_factor: weight of the KL term that keeps "{subject} is a" stable.
        weight_decay: weight of ``|delta|^2 / |h|^2``.
        clamp_norm_factor: the delta's norm is kept at most this times ``|h|``.
        stop_nll: a fact stops once its mean target NLL over the rewrite prompts is
            below this (nats per token; 0.1 is a probability of about 0.9). On 30
            COUNTERFACT records 0.1 gave the same scores as 0.05 in 12% less time.
        most_probable_stop: a fact's target is reached once the new object is the
            greedy answer (every token the argmax, teacher forced) on every rewrite
            prompt, instead of once its NLL is below ``stop_nll``. This is most-probable
            early stopping (ENCORE): targets pushed no further than that ask for smaller
            weight updates, so the edited weights' norms grow more slowly over a long
            stream of edits.
        stop_margin: with ``most_probable_stop``, every new-object token must also lead
            the best other token by at least this many nats of log-probability on every
            rewrite prompt (0: winning is enough). Over 250 facts under the normalised
            rule, 1 nat lifted exact-match efficacy from 0.62 to 0.74 but left
            paraphrase success where it was (bench/README.md).
        neighbour_weight: weight of the neighbours' KL term when NME is on; 1/7 weighs
            it like one prompt among the six rewrite prompts and itself.
        patience: steps a fact whose target is likely keeps optimising while its
            neighbours predict something else than before the edit. The delta that
            rewrites the fact moves neighbours that share its relation, and beyond a few
            steps pushing on only overfits the rewrite; the spread holds neighbours too.
        chunk_size: facts per padded batch (about 10 is fastest on CPU).
        replay_frozen: compute the layers below the edit point once per chunk.
        group_by_width: with ``replay_frozen``, each step runs rows of like suffix width
            as separate batches (``models.prefix.width_groups``), so short rows are not
            padded to the longest. The results are the same up to float rounding.
        train_phrasings: each request's ``phrasings`` are rewrite prompts as well
            (without context prefix). A delta fitted to one wording reaches the others
            only by chance: under the normalised rule, a 1-nat stop margin on that
            wording did nothing for paraphrase success (bench/README.md).
        phrasing_contexts: with ``train_phrasings``, every phrasing is a rewrite prompt
            under every context prefix, as the edit template is, instead of bare only.
        deal_phrasing_contexts: with ``phrasing_contexts``, the context prefixes are
            dealt out among a fact's phrasings instead of given to each: every phrasing
            runs bare, and prefix i after phrasing i modulo their number. Each prefix
            still meets the fact under a second wording, at fewer rows per step (13
            instead of 18 with two phrasings and five prefixes).
        step_rule: ``adam``, or ``normalised``: each fact's delta moves a fixed length
            along its own gradient. Adam moves every coordinate by about the learning
            rate whatever its gradient, so its delta drifts along directions that do
            little for the loss and ends longer than it needs to be. On SmolLM2-135M the
            normalised rule's shifts are 41% shorter for the same stop; over 250 facts
            they cost a third less log perplexity on held-out text, with weaker
            paraphrases (bench/README.md). ``natural``: as ``normalised``, along the
            gradient preconditioned by the inverse of ordinary text's sensitivity
            (``sensitivity``), so each step moves the delta where ordinary text's
            predictions feel it least for the progress it makes. Over 250 facts its
            held-out perplexity cost is under half of Adam's and two thirds of the
            normalised rule's, at the normalised rule's paraphrase success
            (bench/README.md).
        sensitivity_shrinkage: under the ``natural`` rule, the sensitivity is blended
            toward isotropy by this weight (as ``second_moment_shrinkage`` blends C), so
            directions the corpus hardly measured are not taken for free.
        refine_steps: a fact whose last step made its target likely (and stopped it) is
            moved back along that step to the shortest point that keeps it likely, found
            by this many bisections, each one forward pass over its rewrite rows (0: it
            stays where the step left it). A shift then overshoots the stop by at most
            ``2**-refine_steps`` of a step, so longer steps, which need fewer passes, cost
            no longer shifts.
    """

    steps: int = 25
    learning_rate: float = 0.5
    kl_factor: float = 0.0625
    weight_decay: float = 0.5
    clamp_norm_factor: float = 4.0
    stop_nll: float = 0.1
    most_probable_stop: bool = False
    stop_margin: float = 0.0
    neighbour_weight: float = 1 / 7
    patience: int = 3
    chunk_size: int = 10
    replay_frozen: bool = True
    group_by_width: bool = True
    train_phrasings: bool = False
    phrasing_contexts: bool = False
    deal_phrasing_contexts: bool = False
    step_rule: StepRule = StepRule.ADAM
    sensitivity_shrinkage: float = 0.1
    refine_steps: int = 0

    @property
    def needs_sensitivity(self) -> bool:
        """Whether these settings' step rule needs the layer's sensitivity."""
        return self.step_rule is StepRule.NATURAL

    def __post_init__(self) -> None:
        object.__setattr__(self, "step_rule", StepRule.parse(self.step_rule, "step_rule"))
        if self.stop_margin < 0:
            raise ValueError(f"stop_margin must not be negative, got {self.stop_margin}")
        if self.stop_margin > 0 and not self.most_probable_stop:
            raise ValueError("stop_margin applies to most_probable_stop: set it as well")
        if self.phrasing_contexts and not self.train_phrasings:
            raise ValueError("phrasing_contexts applies to train_phrasings: set it as well")
        if self.deal_phrasing_contexts and not self.phrasing_contexts:
            raise ValueError("deal_phrasing_contexts applies to phrasing_contexts: set it as well")
        if not 0 <= self.sensitivity_shrinkage <= 1:
            raise ValueError(
                f"sensitivity_shrinkage must be in [0, 1], got {self.sensitivity_shrinkage}")
        if self.patience < 0:
            raise ValueError(f"patience must not be negative, got {self.patience}")
        if self.refine_steps < 0:
            raise ValueError(f"refine_steps must not be negative, got {self.refine_steps}")
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


class TargetOptimiser(Protocol):
    """Runs the OPTIMIZATION stage: ``optimise_targets``'s arguments and result.

    ``applied`` is the part of the edit under way that is already applied to
    ``loaded``: an optimiser that runs on other copies of the model applies it there.
    ``sensitivity`` is the last edit layer's (``editing.sensitivity``), which the
    ``natural`` step rule needs.
    """

    def __call__(
        self,
        loaded: LoadedModel,
        requests: list[EditRequest],
        layer: int,
        contexts: list[str],
        settings: TargetSettings,
        *,
        use_neighbours: bool,
        cancelled: Cancelled = never,
        applied: ModelDelta | None = None,
        sensitivity: torch.Tensor | None = None,
    ) -> TargetResult: ...


def optimise_targets(
    loaded: LoadedModel,
    requests: list[EditRequest],
    layer: int,
    contexts: list[str],
    settings: TargetSettings,
    *,
    use_neighbours: bool,
    cancelled: Cancelled = never,
    applied: ModelDelta | None = None,
    sensitivity: torch.Tensor | None = None,
) -> TargetResult:
    """Optimise z for each request at decoder ``layer`` (the last edit layer).

    ``contexts`` must start with the bare context ``""``. Leaves the model unchanged,
    also when ``cancelled()`` stops it (``EditCancelled``) before a step. ``applied``
    is already on ``loaded`` and needs nothing here (see ``TargetOptimiser``).
    ``sensitivity`` (hidden, hidden) is needed by the ``natural`` step rule only.

    Chunks of ``settings.chunk_size`` facts are optimised independently of each other,
    so the chunks of a list may be optimised apart (by several workers) and give the
    same result.
    """
    if not contexts or contexts[0] != "":
        raise ValueError("contexts must start with the bare context ''")
    metric = None
    if settings.needs_sensitivity:
        if sensitivity is None:
            raise ValueError("the natural step rule needs the layer's sensitivity")
        metric = _inverse_metric(sensitivity, settings.sensitivity_shrinkage).to(loaded.device)
    parts = [
        _optimise_chunk(loaded, chunk, layer, contexts, settings, use_neighbours, cancelled,
                        metric)
        for chunk in fact_chunks(requests, settings)
    ]
    return TargetResult(
        z=torch.cat([p.z for p in parts]),
        initial=torch.cat([p.initial for p in parts]),
        probability=[x for p in parts for x in p.probability],
        steps=[x for p in parts for x in p.steps],
    )


def fact_chunks(requests: list[EditRequest], settings: TargetSettings) -> list[list[EditRequest]]:
    """``requests`` in the chunks ``optimise_targets`` optimises apart, in order."""
    size = settings.chunk_size
    return [requests[i : i + size] for i in range(0, len(requests), size)]


def _build_rows(
    loaded: LoadedModel, requests: list[EditRequest], contexts: list[str], use_neighbours: bool,
    settings: TargetSettings,
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
        if settings.train_phrasings:
            for phrasing, context in phrasing_rows(request.phrasings, contexts, settings):
                add(PromptSpec(phrasing, request.subject, new_ids, context), fact, "rewrite")
        add(PromptSpec(KL_TEMPLATE, request.subject), fact, "kl")
        if use_neighbours:
            for neighbour in request.neighbours:
                add(PromptSpec(neighbour.template, neighbour.subject), fact, "neighbour")
    return rows


def phrasing_rows(phrasings: tuple[str, ...], contexts: list[str],
                  settings: TargetSettings) -> list[tuple[str, str]]:
    """The (phrasing, context) pairs a fact's phrasings are trained under, phrasing by
    phrasing; ``contexts`` starts with the bare context."""
    if not settings.phrasing_contexts:
        return [(phrasing, "") for phrasing in phrasings]
    if not settings.deal_phrasing_contexts:
        return [(phrasing, context) for phrasing in phrasings for context in contexts]
    return [(phrasing, context)
            for index, phrasing in enumerate(phrasings)
            for context in ["", *contexts[1:][index :: len(phrasings)]]]


def _optimise_chunk(
    loaded: LoadedModel,
    requests: list[EditRequest],
    layer: int,
    contexts: list[str],
    settings: TargetSettings,
    use_neighbours: bool,
    cancelled: Cancelled,
    inverse_metric: torch.Tensor | None,
) -> TargetResult:
    device = loaded.device
    rows = _build_rows(loaded, requests, contexts, use_neighbours, settings)
    aligned = align_at_subject(encode(loaded, rows.specs))
    split = aligned.split
    fact_of_row = torch.tensor(rows.fact, device=device)
    kind = {
        k: torch.tensor([x == k for x in rows.kind], device=device)
        for k in ("rewrite", "kl", "neighbour")
    }
    bare = torch.zeros(len(rows.specs), dtype=torch.bool, device=device)
    bare[rows.bare] = True
    watched = kind["kl"] | kind["neighbour"]  # rows whose next-token distribution is kept

    forward, cache = full_forward(aligned)
    with torch.no_grad(), capture_hidden(loaded, [layer]) as captured:
        # Reference next-token distributions: the KL terms keep "{subject} is a" and
        # the neighbours' prompts as the model had them before the edit.
        reference = batch_scores(
            loaded, aligned.full, watched, labels=aligned.labels, **forward
        ).next_token
    predicted = reference.argmax(dim=-1)  # (watched rows,)
    watched_index = torch.cumsum(watched.long(), dim=0) - 1  # row -> its index in reference
    hidden = captured[layer].detach()  # (rows, tokens, hidden)
    prefix = prefix_states(cache, split)
    suffix = aligned.suffix()
    suffix_widths = suffix.read_widths()
    initial = hidden[torch.tensor(rows.bare, device=device), split].float()

    facts = len(requests)
    delta = torch.zeros_like(initial, requires_grad=True)  # (facts, hidden): z - initial
    before_step = torch.zeros_like(initial)  # each fact's delta before its latest step
    optimiser = torch.optim.Adam([delta], lr=settings.learning_rate)
    step_length = settings.learning_rate * initial.norm(dim=1)  # per fact, fixed-length rules
    max_norm = settings.clamp_norm_factor * initial.norm(dim=1)
    active = torch.arange(facts, device=device)  # facts still optimised
    probability = torch.zeros(facts, device=device)
    steps = torch.zeros(facts, dtype=torch.long, device=device)
    waited = torch.zeros(facts, dtype=torch.long, device=device)  # steps since likely
    reached = torch.zeros(facts, dtype=torch.bool, device=device)  # likely by its last step
    state: dict[str, torch.Tensor] = {}

    def deltas_for_rows() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return state["rows"], state["positions"], state["vectors"]

    def score_rows(chosen: torch.Tensor, vectors: torch.Tensor) -> BatchScores:
        """One forward pass over rows ``chosen``, ``vectors[i]`` added at row i's subject."""
        if replay is not None:
            width = int(suffix_widths[chosen].max())
            sub = suffix.select(chosen).first_columns(width)
            labels = aligned.labels[chosen, split:]
            arguments = suffix_forward(aligned, prefix, chosen, width)
            replay.replay = hidden[chosen, split : split + width]
        else:
            sub = aligned.full.select(chosen)
            labels = aligned.labels[chosen]
            arguments = {"position_ids": aligned.positions[chosen]}
        state["rows"] = torch.arange(len(chosen), device=device)
        state["positions"] = sub.subject_last
        state["vectors"] = vectors
        return batch_scores(loaded, sub, watched[chosen], labels=labels, **arguments)

    def run_rows(of: torch.Tensor, vectors: torch.Tensor,
                 rows: torch.Tensor | None = None) -> _Forward:
        """The rows of facts ``of`` (those in the mask ``rows``, if given) run with
        ``vectors[i]`` added at the subject of fact ``of[i]``'s rows."""
        wanted = torch.isin(fact_of_row, of)
        chosen = torch.nonzero(wanted if rows is None else wanted & rows).squeeze(1)
        groups = [(0, len(chosen))]
        if replay is not None and settings.group_by_width:
            # Rows of like suffix width run together, so short rows pad less.
            chosen = chosen[torch.argsort(suffix_widths[chosen], stable=True)]
            groups = width_groups(suffix_widths[chosen].tolist(), overhead=GROUP_OVERHEAD)
        slot = torch.full((facts,), -1, dtype=torch.long, device=device)
        slot[of] = torch.arange(len(of), device=device)
        row_slot = slot[fact_of_row[chosen]]  # (chosen rows,) index into ``of``
        row_vectors = vectors[row_slot]
        scores = BatchScores.concatenated([
            score_rows(chosen[start:end], row_vectors[start:end]) for start, end in groups
        ])
        masks = {name: mask[chosen] for name, mask in kind.items()}
        return _Forward(chosen, row_slot, watched[chosen], masks, scores, len(of))

    def target_reached(passed: _Forward) -> torch.Tensor:
        """(facts of the pass,) whether each fact's target is as likely as its stop asks."""
        rewrite = passed.masks["rewrite"]
        if settings.most_probable_stop:
            scores = passed.scores
            wrong = ((~scores.exact) | (scores.margin < settings.stop_margin)).float()
            return passed.per_fact(wrong, rewrite) == 0
        return passed.per_fact(passed.scores.nll, rewrite) < settings.stop_nll

    def bare_probability(passed: _Forward) -> torch.Tensor:
        """(facts of the pass,) the new object's per-token probability on the bare prompt."""
        on_bare = bare[passed.chosen]
        nll = torch.zeros(passed.facts, device=device).index_add(
            0, passed.row_slot[on_bare], passed.scores.nll[on_bare])
        return torch.exp(-nll).detach()

    with ExitStack() as stack:
        stack.enter_context(frozen_parameters(loaded.model))
        replay = (
            stack.enter_context(replay_below(loaded, layer)) if settings.replay_frozen else None
        )
        stack.enter_context(add_at_positions(loaded, layer, deltas_for_rows))
        for step in range(settings.steps + 1):
            stop_if(cancelled)
            vectors = delta[active]  # (active, hidden): finished facts get no gradient
            passed = run_rows(active, vectors)
            scores, watching, chosen = passed.scores, passed.watching, passed.chosen
            log_probs = scores.next_token
            was = reference[watched_index[chosen[watching]]]
            kl = torch.zeros(len(chosen), device=device)
            kl[watching] = (was.exp() * (was - log_probs)).sum(dim=-1)
            moved = torch.zeros(len(chosen), device=device)
            moved[watching] = (
                log_probs.argmax(dim=-1) != predicted[watched_index[chosen[watching]]]
            ).float()

            masks = passed.masks
            neighbour_kl = passed.per_fact(kl, masks["neighbour"])
            decay = vectors.norm(dim=1) ** 2 / initial[active].norm(dim=1) ** 2
            losses = (
                passed.per_fact(scores.nll, masks["rewrite"])
                + settings.kl_factor * passed.per_fact(kl, masks["kl"])
                + settings.neighbour_weight * neighbour_kl
                + settings.weight_decay * decay
            )
            neighbours_moved = passed.per_fact(moved, masks["neighbour"])
            likely = target_reached(passed)
            probability[active] = bare_probability(passed)
            steps[active] = step
            waited[active] = torch.where(likely, waited[active] + 1, 0)
            # Once the target is likely, neighbours get a few steps to come back.
            settled = (neighbours_moved == 0) | (waited[active] > settings.patience)
            finished = (likely & settled) | (step == settings.steps)
            reached[active] = likely
            still = active[~finished]
            if len(still) == 0:  # the step's one wait for the device
                break
            optimiser.zero_grad(set_to_none=True)
            losses[~finished].sum().backward()
            with torch.no_grad():
                before_step[still] = delta[still]
                if settings.step_rule is StepRule.ADAM:
                    current = delta.detach().clone()
                    optimiser.step()
                    # Adam's momentum would move facts that are done: they keep their values.
                    done = torch.ones(facts, dtype=torch.bool, device=device)
                    done[still] = False
                    delta[done] = current[done]
                else:
                    gradient = delta.grad[still]
                    if inverse_metric is not None:
                        gradient = gradient @ inverse_metric
                    lengths = gradient.norm(dim=1, keepdim=True).clamp(min=1e-12)
                    delta[still] -= step_length[still].unsqueeze(1) * gradient / lengths
                norms = delta[still].norm(dim=1)
                over = norms > max_norm[still]
                scale = torch.where(over, max_norm[still] / norms, torch.ones_like(norms))
                delta[still] *= scale.unsqueeze(1)
            active = still

        # Facts whose last step made their target likely go back along that step.
        refined = torch.nonzero(reached & (waited == 1) & (steps > 0)).squeeze(1)
        if settings.refine_steps and len(refined):
            with torch.no_grad():
                start, end = before_step[refined], delta[refined].detach()
                low = torch.zeros(len(refined), device=device)  # not likely there
                high = torch.ones(len(refined), device=device)  # likely there
                for _ in range(settings.refine_steps):
                    stop_if(cancelled)
                    middle = (low + high) / 2
                    passed = run_rows(refined, start + middle.unsqueeze(1) * (end - start),
                                      kind["rewrite"])
                    likely = target_reached(passed)
                    high = torch.where(likely, middle, high)
                    low = torch.where(likely, low, middle)
                    kept = refined[likely]
                    probability[kept] = bare_probability(passed)[likely]
                delta[refined] = start + high.unsqueeze(1) * (end - start)

    z = initial + delta.detach()
    return TargetResult(z=z, initial=initial, probability=probability.tolist(),
                        steps=steps.tolist())


@dataclass
class _Forward:
    """One forward pass of ``_optimise_chunk`` over the rows of some of its facts.

    Attributes:
        chosen: (rows,) the rows passed, as indices into the chunk's batch.
        row_slot: (rows,) each row's fact, as an index into the facts of the pass.
        watching: (rows,) rows whose next-token distribution was read.
        masks: per row kind ("rewrite", "kl", "neighbour"), which rows are of it.
        scores: what the pass says about the rows.
        facts: facts in the pass.
    """

    chosen: torch.Tensor
    row_slot: torch.Tensor
    watching: torch.Tensor
    masks: dict[str, torch.Tensor]
    scores: BatchScores
    facts: int

    def per_fact(self, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(facts,) the mean of ``values`` over each fact's rows in ``mask``."""
        return _mean_per_fact(values, mask, self.row_slot, self.facts)


def _inverse_metric(sensitivity: torch.Tensor, shrinkage: float) -> torch.Tensor:
    """(hidden, hidden) float32 inverse of ``sensitivity`` blended toward isotropy by
    ``shrinkage`` (keeping its trace), scaled to a unit mean eigenvalue."""
    matrix = sensitivity.to(torch.float64)
    size = matrix.shape[0]
    mean = matrix.trace() / size
    blended = (1 - shrinkage) * matrix + shrinkage * mean * torch.eye(size, dtype=torch.float64)
    return (torch.linalg.inv(blended / mean)).float()


def _mean_per_fact(
    values: torch.Tensor, mask: torch.Tensor, row_slot: torch.Tensor, facts: int
) -> torch.Tensor:
    """(facts,) mean of ``values`` over each fact's rows in ``mask``; 0 for a fact with none.

    ``row_slot`` gives each row's fact.
    """
    total = torch.zeros(facts, device=values.device).index_add(0, row_slot[mask], values[mask])
    count = torch.zeros(facts, device=values.device).index_add(
        0, row_slot[mask], torch.ones_like(values[mask])
    )
    return total / count.clamp(min=1)

