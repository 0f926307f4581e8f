"""The SPREAD stage: closed-form weight updates that carry target vectors into weights.

For each edit layer in turn (lowest first), the residual between the targets z and the
current hidden state at the last edit layer is split evenly over the layers left, and the
layer's MLP output projection gets the update that maps the subjects' keys K to that
share R:

- MEMIT: ``dW = R K^T (lambda C + K_p K_p^T + K K^T)^-1``, C the second moment of keys
  over a corpus.
- AlphaEdit: ``dW = R K^T P ((K_p K_p^T + K K^T) P + l2 I)^-1``, P the projector onto the
  null space of C, so the update leaves corpus keys (nearly) untouched.

K_p holds keys whose outputs must not move: those of facts applied earlier (the live
version's state; the spread needs only their sum of outer products), those of the job's
NME neighbours and those of the tokens that lead every text, read from the model as it
is, when asked (``SpreadSettings.hold_lead``). The leading tokens' keys are then held
far more firmly than any fact's (``LEAD_WEIGHT``): their outputs are the same in every
text and the key statistics leave them out; on SmolLM2-135M a few jobs that moved them
raised the loss of the first token of every text by 2.4 nats on average
(bench/README.md). There the start token's key at layer 2 is 30 times a typical key's
norm, and C leaves it 12 times cheaper to move than a typical key; at layers 3-6 it is
small and C already holds it firmly (``LeadHold.WHERE_CHEAP`` holds it only where it is
cheap). For MEMIT this is the
least-squares update that also asks ``dW k_p = 0`` of every such key; without it, every
later job is free to overwrite earlier edits.

Both updates have rank at most the number of facts and come back as factors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from factsync.editing.covariance import KeyStatistics, ShrinkageTarget
from factsync.editing.delta import LayerDelta, ModelDelta, restored_weights
from factsync.editing.keys import FrozenStates, frozen_states, lead_keys, subject_states
from factsync.models.loading import LoadedModel
from factsync.typed_yaml import Choice

# How firmly the leading tokens' keys are held, as a count of facts' keys: their
# outputs then move by well under 1e-3 of what an unheld key's would.
LEAD_WEIGHT = 1e6


class Algorithm(Choice):
    """The closed-form update."""

    MEMIT = "memit"
    ALPHAEDIT = "alphaedit"


class LeadHold(Choice):
    """Where the spread holds the outputs at the tokens that lead every text.

    ``never``; ``every_layer``: at every edit layer; ``where_cheap``: at the edit
    layers whose key statistics leave a leading token cheaper to move than a typical
    key (its ``k^T C^-1 k`` above the median of the sampled keys'), decided when the
    engine is built (``LayerContext.lead_cheap``).
    """

    NEVER = "never"
    EVERY_LAYER = "every_layer"
    WHERE_CHEAP = "where_cheap"


@dataclass(frozen=True)
class SpreadSettings:
    """Settings of the closed-form update.

    Attributes:
        algorithm: ``memit`` or ``alphaedit`` (a name is taken as the ``Algorithm``).
        update_fraction: the share f of its requested change a typical key gets per
            layer, which sets the strength of both updates. MEMIT: with
            ``q = k^T C^-1 k`` (median over corpus keys) a single key moves by
            ``q / (q + lambda)``, so ``lambda = q (1 - f) / f``. AlphaEdit: likewise with
            ``q = k^T P k`` (mean over the edit keys) for its ridge term.
        mom2_update_weight: a fixed MEMIT lambda for every layer instead of the derived one.
        nullspace_threshold: AlphaEdit keeps directions whose eigenvalue of C is below
            this fraction of the largest eigenvalue.
        preserve_applied: MEMIT also holds the keys of facts applied earlier in place
            (AlphaEdit always does).
        second_moment_shrinkage: MEMIT uses C blended toward
            ``second_moment_shrinkage_target`` by this weight (``KeyStatistics.shrunk``).
            C comes from text the model wrote itself; on
            SmolLM2-135M, ordinary text has about 2.5 times that corpus's variance along
            C's weakest third of directions, which an unshrunk C marks as cheap to change.
            0 uses C as sampled.
        second_moment_shrinkage_target: what C is blended toward (a ``ShrinkageTarget`` or
            its name): ``isotropic`` (the default) or ``diagonal``, which keeps each key
            unit's variance.
        joint_layers: MEMIT solves every edit layer's update at once over the joint
            second moment of their stacked keys (``joint_spread``), instead of layer by
            layer. Its lambda comes from ``update_fraction`` over the stacked keys.
        hold_lead: where to hold the outputs at the tokens that lead every text (the
            start token) in place, weighted ``LEAD_WEIGHT`` (a ``LeadHold`` or its name).
            ``never`` for the engine by default, since on tiny random models the hold
            leaves some edits too weak to take; policies default to ``where_cheap``
            (``EditingPolicy.hold_lead``).
    """

    algorithm: Algorithm = Algorithm.MEMIT
    update_fraction: float = 0.3
    mom2_update_weight: float | None = None
    nullspace_threshold: float = 1e-2
    preserve_applied: bool = True
    second_moment_shrinkage: float = 0.0
    second_moment_shrinkage_target: ShrinkageTarget = ShrinkageTarget.ISOTROPIC
    joint_layers: bool = False
    hold_lead: LeadHold = LeadHold.NEVER

    def __post_init__(self) -> None:
        object.__setattr__(self, "algorithm", Algorithm.parse(self.algorithm, "algorithm"))
        object.__setattr__(self, "hold_lead", LeadHold.parse(self.hold_lead, "hold_lead"))
        object.__setattr__(self, "second_moment_shrinkage_target", ShrinkageTarget.parse(
            self.second_moment_shrinkage_target, "second_moment_shrinkage_target"))
        if not 0 < self.update_fraction < 1:
            raise ValueError(f"update_fraction must be in (0, 1), got {self.update_fraction}")
        if not 0 <= self.second_moment_shrinkage < 1:
            raise ValueError("second_moment_shrinkage must be in [0, 1), "
                             f"got {self.second_moment_shrinkage}")
        if self.mom2_update_weight is not None and self.mom2_update_weight <= 0:
            raise ValueError(f"mom2_update_weight must be positive, got {self.mom2_update_weight}")
        if self.joint_layers and self.algorithm is not Algorithm.MEMIT:
            raise ValueError("joint_layers solves MEMIT's update; AlphaEdit spreads layer by layer")


@dataclass(frozen=True)
class HeldSystem:
    """A factorisation of MEMIT's fixed part ``A = lambda C + K_p K_p^T`` (float64).

    It changes only when an edit is applied or the lineage restored, so the engine
    factors it once per layer and job (``LayerContext.memit_system``) and every spread of
    the job solves with it: ``memit_update`` then needs only a system as small as the
    keys it is given, not one of the key size (the Woodbury identity).

    Attributes:
        factor: the Cholesky factor of A, or its LU factorisation when A is not
            positive definite enough for Cholesky.
        pivots: the LU pivots; ``None`` for a Cholesky factor.
    """

    factor: torch.Tensor
    pivots: torch.Tensor | None = None

    @classmethod
    def factorise(cls, second_moment: torch.Tensor, lam: float,
                  preserved: torch.Tensor | None, device: torch.device) -> HeldSystem:
        """Factor ``lam C + preserved`` on ``device``."""
        system = lam * second_moment.to(device=device, dtype=torch.float64)
        if preserved is not None:
            system += preserved.to(device=device, dtype=torch.float64)
        factor, info = torch.linalg.cholesky_ex(system)
        if int(info) == 0:
            return cls(factor)
        return cls(*torch.linalg.lu_factor(system))

    def solve(self, right: torch.Tensor) -> torch.Tensor:
        """``A^-1 right`` for a float64 ``right`` (key, m) on the factor's device."""
        if self.pivots is None:
            return torch.cholesky_solve(right, self.factor)
        return torch.linalg.lu_solve(self.factor, self.pivots, right)


def memit_update(
    keys: torch.Tensor,
    residual: torch.Tensor,
    held: HeldSystem,
    held_keys: torch.Tensor | None = None,
    released_keys: torch.Tensor | None = None,
) -> LayerDelta:
    """``dW = R K^T (A + H H^T - E E^T + K K^T)^-1`` as factors, with
    ``A = lambda C + K_p K_p^T`` factored in ``held``.

    keys (key, n), residual (value, n), held_keys H (key, m): more keys to hold in place
    (a job's NME neighbours), or ``None``; released_keys E (key, r): columns of K_p to
    hold no longer (``None``: none). With ``U = [K, H, E]`` and ``D`` the diagonal of
    their signs (+1, +1, -1), the Woodbury identity gives
    ``(A + U D U^T)^-1 U = A^-1 U (D + U^T A^-1 U)^-1 D``, so past the cached factor only
    an (n + m + r) square system is solved. Float64 throughout.
    """
    device = held.factor.device
    parts = [(keys, 1.0), (held_keys, 1.0), (released_keys, -1.0)]
    u = torch.cat([x.to(device=device, dtype=torch.float64) for x, _ in parts if x is not None],
                  dim=1)
    signs = torch.cat([torch.full((x.shape[1],), sign, dtype=torch.float64, device=device)
                       for x, sign in parts if x is not None])
    a_inv_u = held.solve(u)  # (key, n + m + r)
    inner = torch.diag(signs) + u.T @ a_inv_u
    # Only the columns of K carry a residual: dW = R (S^-1 K)^T with S the whole system,
    # S^-1 K the first n columns of S^-1 U, where D is +1.
    identity = torch.eye(u.shape[1], dtype=torch.float64, device=device)
    adjusted = a_inv_u @ torch.linalg.solve(inner, identity[:, : keys.shape[1]])  # (key, n)
    return LayerDelta(up=residual.float(), down=adjusted.to(keys.device).float())


def nullspace_projector(second_moment: torch.Tensor, threshold: float) -> torch.Tensor:
    """Projector onto eigen-directions of C below ``threshold`` times its largest one."""
    values, vectors = torch.linalg.eigh(second_moment.double())
    kept = vectors[:, values < threshold * values.max()]  # (key, null dims)
    return (kept @ kept.T).float()


def alphaedit_update(
    keys: torch.Tensor,
    residual: torch.Tensor,
    projector: torch.Tensor,
    preserved: torch.Tensor,
    l2: float,
) -> LayerDelta:
    """``dW = R K^T P ((K_p K_p^T + K K^T) P + l2 I)^-1`` as factors.

    preserved is ``K_p K_p^T`` (key, key) of facts applied earlier; l2 is absolute here.
    """
    k = keys.double()
    p = projector.double().to(k.device)
    system = p @ (preserved.double().to(k.device) + k @ k.T)
    system += l2 * torch.eye(system.shape[0], dtype=system.dtype, device=system.device)
    # With A = P M + l2 I (M symmetric): dW^T = A^-1 P K R^T, so dW = R (A^-1 P K)^T.
    adjusted = torch.linalg.solve(system, p @ k)  # (key, n)
    return LayerDelta(up=residual.float(), down=adjusted.float())


@dataclass
class LayerContext:
    """What the spread needs per layer, beyond the facts.

    Attributes:
        second_moment: C, (key, key) mean of k k^T over the corpus.
        lam: MEMIT's lambda for this layer.
        projector: AlphaEdit's null-space projector (key, key), when used.
        preserved: ``K_p K_p^T`` (key, key) of earlier edits, when they are preserved;
            change it only through ``hold`` and ``forget_held``, which drop the cached
            factorisation.
        lead_cheap: C leaves a token that leads every text cheaper to move than a
            typical key (``lead_is_cheap``): ``LeadHold.WHERE_CHEAP`` holds it here.
    """

    second_moment: torch.Tensor
    lam: float
    projector: torch.Tensor | None = None
    preserved: torch.Tensor | None = None
    lead_cheap: bool = False
    _system: HeldSystem | None = field(default=None, repr=False)

    def memit_system(self, device: torch.device) -> HeldSystem:
        """``lambda C + K_p K_p^T`` factored on ``device``, once until it changes."""
        if self._system is None or self._system.factor.device != torch.device(device):
            self._system = HeldSystem.factorise(self.second_moment, self.lam,
                                                self.preserved, torch.device(device))
        return self._system

    def hold(self, keys: torch.Tensor, sign: float = 1.0) -> None:
        """Add ``K K^T`` of newly applied keys (key, n) to ``preserved``; ``sign`` -1
        lets go of keys that no longer stand. In place: ``preserved`` may be large."""
        if self.preserved is not None:
            held = keys.to(device=self.preserved.device, dtype=torch.float64)
            self.preserved.addmm_(held, held.T, alpha=sign)
            self._system = None

    def forget_held(self) -> None:
        """Preserve nothing (before the lineage's keys are held again)."""
        if self.preserved is not None:
            self.preserved.zero_()
            self._system = None


def spread(
    loaded: LoadedModel,
    prompts: list[tuple[str, str]],
    targets: torch.Tensor,
    layers: list[int],
    contexts: list[str],
    layer_contexts: dict[int, LayerContext],
    settings: SpreadSettings,
    *,
    protected: Sequence[tuple[str, str]] = (),
    released: dict[int, torch.Tensor] | None = None,
) -> tuple[ModelDelta, dict[int, torch.Tensor], torch.Tensor]:
    """Spread targets z (facts, hidden) at ``layers[-1]`` over ``layers``.

    ``prompts`` holds each fact's (template, subject); ``protected`` the (template,
    subject) of facts whose outputs must stay where they are now (NME neighbours);
    ``released`` per layer keys (key, r) among the preserved ones to hold no longer
    (those of subjects this job writes again).
    Returns the delta, the keys (key, groups) used at each layer and the fact each key
    group belongs to (the same at every layer). Leaves the model's weights as it found
    them.
    """
    paths = [loaded.spec.mlp_out_path(layer) for layer in layers]
    delta = ModelDelta(layers={}, layout=loaded.spec.weight_layout)
    used_keys: dict[int, torch.Tensor] = {}
    owners = torch.empty(0, dtype=torch.long)
    with restored_weights(loaded, paths):
        # The updates change layers[0] and above: what runs below it is read once.
        below = layers[0] - 1
        frozen = frozen_states(loaded, prompts, below, contexts) if below >= 0 else None
        frozen_protected = (frozen_states(loaded, protected, below, [""])
                            if below >= 0 and protected else None)
        for position, (layer, path) in enumerate(zip(layers, paths, strict=True)):
            states = subject_states(loaded, prompts, layer, layers[-1], contexts, frozen=frozen)
            keys = states.keys  # (key, groups)
            share = (targets.to(states.outputs) - states.outputs) / (len(layers) - position)
            share = share[states.owners].T  # (hidden, groups): every key of a fact gets its share
            context = layer_contexts[layer]
            neighbours = held_keys(
                protected_keys(loaded, protected, layer, frozen=frozen_protected),
                lead_keys(loaded, [layer]).get(layer)
                if holds_lead(settings.hold_lead, context) else None)
            let_go = (released or {}).get(layer)
            if settings.algorithm is Algorithm.MEMIT:
                update = memit_update(keys, share, context.memit_system(keys.device),
                                      neighbours, let_go)
            else:
                held = _held_in_place(context, neighbours, let_go)
                if context.projector is None or held is None:
                    raise ValueError(f"AlphaEdit needs a projector and preserved keys at {layer}")
                projected = (keys * (context.projector.to(keys) @ keys)).sum(dim=0)  # k^T P k
                fraction = settings.update_fraction
                l2 = float(projected.mean()) * (1 - fraction) / fraction
                update = alphaedit_update(keys, share, context.projector, held, l2)
            step = ModelDelta(layers={path: update}, layout=delta.layout)
            step.apply(loaded)  # later layers see this one; restored_weights undoes it
            delta = delta.compose(step)
            used_keys[layer] = keys
            owners = states.owners
    return delta, used_keys, owners


def lead_is_cheap(statistics: KeyStatistics, lead: torch.Tensor | None) -> bool:
    """Whether C leaves one of the ``lead`` keys (key, t) cheaper to move than a typical
    key: its ``k^T C^-1 k`` above the median of ``statistics``' sampled keys'."""
    if lead is None or lead.shape[1] == 0:
        return False
    return float(statistics.relative_mahalanobis(lead.T).max()) > 1


def holds_lead(rule: LeadHold, context: LayerContext) -> bool:
    """Whether the spread holds the leading tokens' outputs at ``context``'s layer."""
    return rule is LeadHold.EVERY_LAYER or (rule is LeadHold.WHERE_CHEAP and context.lead_cheap)


def protected_keys(loaded: LoadedModel, protected: Sequence[tuple[str, str]],
                   layer: int, *, frozen: FrozenStates | None = None) -> torch.Tensor | None:
    """Keys (key, m) at ``layer`` of the facts whose outputs must stay (``None``: none).

    ``frozen``: ``frozen_states`` of ``protected`` (bare context) below ``layer``, if any.
    """
    if not protected:
        return None
    return subject_states(loaded, list(protected), layer, layer, [""], frozen=frozen).keys


def held_keys(neighbours: torch.Tensor | None,
              lead: torch.Tensor | None) -> torch.Tensor | None:
    """The keys (key, m) a spread holds in place besides the earlier edits': the
    protected facts' and the leading tokens' (``lead_keys``), the latter weighted
    ``LEAD_WEIGHT`` (``None``: none)."""
    parts = [keys for keys in (neighbours, None if lead is None else lead * LEAD_WEIGHT ** 0.5)
             if keys is not None]
    return torch.cat([part.to(parts[0]) for part in parts], dim=1) if parts else None


def _held_in_place(context: LayerContext, neighbours: torch.Tensor | None,
                   released: torch.Tensor | None) -> torch.Tensor | None:
    """``K_p K_p^T``: earlier edits' keys less the released ones, plus the protected
    facts' keys."""
    held = context.preserved
    for keys, sign in ((neighbours, 1.0), (released, -1.0)):
        if keys is not None:
            product = sign * (keys.double() @ keys.double().T)
            held = product if held is None else held + product.to(held)
    return held
