"""A spread that solves every edit layer's update at once, over their joint key statistics.

MEMIT's spread (``spread``) solves each edit layer alone: layer l gets the update that
fits its share of the residual while moving ordinary text's keys least, measured by
that layer's C_l. On ordinary text, though, all the layers' changes land in the same
residual stream and add up, and one token's keys at different layers are correlated:
no layer's solve sees what the others add.

Stacking the layers' keys ``k~ = [k_a; ...; k_b]`` and their updates
``dW~ = [dW_a ... dW_b]`` makes the stream's change on a token ``dW~ k~``, to first
order (a lower layer's change reaches the last edit layer's output along the residual
path). ``dW~ = R K~^T (lambda C~ + K~ K~^T)^-1``, with C~ the second moment of the
stacked keys over the corpus, cross-layer blocks included, fits the whole residual
while moving ordinary text's stream least. C~ is (sum of key sizes) square: about 0.24
GB in float32 for SmolLM2-135M's five edit layers, far too large for an 8B model's.

The engine uses it when ``SpreadSettings.joint_layers`` is set; it then holds earlier
edits' stacked keys ``K~_p K~_p^T``, cross-layer blocks included. ``bench coupling``
compares it with the per-layer spread fact by fact.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from factsync.editing.corpus import corpus_digest
from factsync.editing.covariance import (
    KeyStatistics,
    ShrinkageTarget,
    batch_keys,
    layer_key_size,
    lead_ids,
    shrinkage_diagonal,
    token_windows,
    window_batches,
)
from factsync.editing.delta import LayerDelta, ModelDelta
from factsync.editing.keys import lead_keys, subject_states_by_layer
from factsync.editing.spread import LayerContext, held_keys, memit_update
from factsync.editing.tensor_cache import cached_tensor
from factsync.models.loading import LoadedModel

log = logging.getLogger(__name__)

JOINT_TOKENS = 100_000
"""Corpus tokens behind C~ by default: about 13 per dimension of five stacked layers."""
JOINT_FORMAT = "1"
JOINT_MAX_SIZE = 16_384
"""The largest stacked key size solved jointly: at this size C~, the held product and
the factor take 2 GB each in float64."""


def stacked_key_size(loaded: LoadedModel, layers: list[int]) -> int:
    """The sum of ``layers``' key sizes; ``ValueError`` above ``JOINT_MAX_SIZE``, before
    anything of that size is allocated."""
    size = sum(layer_key_size(loaded, layer) for layer in set(layers))
    if size > JOINT_MAX_SIZE:
        raise ValueError(
            f"the joint spread over layers {sorted(set(layers))} of {loaded.name} would solve "
            f"over {size} stacked key dimensions ({size * size * 8 / 1e9:.1f} GB per matrix), "
            f"more than the {JOINT_MAX_SIZE} it allows: edit fewer layers or set "
            "joint_layers: false")
    return size


def joint_second_moment(loaded: LoadedModel, layers: list[int], texts: list[str], *,
                        token_budget: int = JOINT_TOKENS, batch_size: int = 8,
                        max_length: int = 256, progress: bool = True) -> torch.Tensor:
    """(sum of key sizes, same) float32 mean of ``k~ k~^T`` over the counted tokens of
    ``texts`` (windowed as ``compute_key_statistics`` does), the layers in ascending
    order. Accumulated in float64."""
    if token_budget <= 0:
        raise ValueError(f"token_budget must be positive, got {token_budget}")
    layers = sorted(set(layers))
    lead = lead_ids(loaded)
    size = stacked_key_size(loaded, layers)
    total = torch.zeros((size, size), dtype=torch.float64, device=loaded.device)
    counted = 0
    windows = window_batches(token_windows(loaded, texts, lead, max_length), batch_size)
    with tqdm(total=token_budget, unit="tok", desc="joint key statistics",
              disable=not progress) as bar:
        for batch in windows:
            keys = batch_keys(loaded, layers, batch, len(lead))
            stacked = torch.cat([keys[layer] for layer in layers], dim=1)
            stacked = stacked[: token_budget - counted].float()
            total += (stacked.T @ stacked).double()  # float32 products, float64 sums
            counted += len(stacked)
            bar.update(len(stacked))
            if counted >= token_budget:
                break
    if counted == 0:
        raise ValueError("the corpus holds no tokens to compute joint key statistics over")
    if counted < token_budget:
        log.warning("the corpus held %d of the %d tokens asked for the joint key statistics "
                    "of %d dimensions: they are noisier", counted, token_budget, size)
    return (total / counted).float().cpu()


def joint_moment_for(loaded: LoadedModel, layers: list[int], texts: list[str],
                     directory: Path, *, token_budget: int = JOINT_TOKENS,
                     max_length: int = 256) -> torch.Tensor:
    """``joint_second_moment``'s answer, kept in ``directory`` beside the key statistics."""
    layers = sorted(set(layers))
    stacked_key_size(loaded, layers)
    digest = corpus_digest(texts)
    names = "-".join(str(layer) for layer in layers)
    path = (directory / loaded.fingerprint
            / f"joint-layers{names}-{digest}-{token_budget}-len{max_length}.safetensors")
    expected = {"format": JOINT_FORMAT, "fingerprint": loaded.fingerprint, "layers": names,
                "corpus_digest": digest, "token_budget": str(token_budget),
                "max_length": str(max_length)}
    return cached_tensor(
        path, "second_moment", expected,
        f"the joint key statistics of layers {names} over {token_budget} tokens "
        f"(corpus {digest})",
        lambda: joint_second_moment(loaded, layers, texts, token_budget=token_budget,
                                    max_length=max_length))


def shrunk_blocks(moment: torch.Tensor, sizes: list[int], weight: float,
                  target: ShrinkageTarget = ShrinkageTarget.ISOTROPIC) -> torch.Tensor:
    """``moment`` blended toward ``target`` layer by layer, as ``KeyStatistics.shrunk``
    blends one layer's C: ``(1 - w) C~ + w D_l`` on layer l's diagonal block, ``D_l``
    from that block (``shrinkage_diagonal``). Float64."""
    if not 0 <= weight < 1:
        raise ValueError(f"shrinkage weight must be in [0, 1), got {weight}")
    if sum(sizes) != moment.shape[0]:
        raise ValueError(f"layer sizes {sizes} do not add up to the moment's {moment.shape[0]}")
    blended = (1 - weight) * moment.to(torch.float64)
    start = 0
    for size in sizes:
        block = slice(start, start + size)
        blended[block, block].diagonal().add_(
            weight * shrinkage_diagonal(moment[block, block], target))
        start += size
    return blended


@dataclass(frozen=True)
class JointSpread:
    """The joint update for one lambda, over the edit layers' stacked keys.

    Attributes:
        layers: the edit layers, ascending.
        sizes: their key sizes.
        context: ``lambda C~`` and, when earlier edits are preserved, the stacked
            ``K~_p K~_p^T`` of their keys, factored once until it changes.
    """

    layers: list[int]
    sizes: list[int]
    context: LayerContext

    @classmethod
    def build(cls, loaded: LoadedModel, layers: list[int], moment: torch.Tensor, lam: float,
              *, preserve: bool = False) -> JointSpread:
        """The spread over ``layers`` with C~ ``moment`` (already shrunk, if wanted);
        ``preserve`` starts an empty stacked product of held keys."""
        layers = sorted(set(layers))
        sizes = [layer_key_size(loaded, layer) for layer in layers]
        if sum(sizes) != moment.shape[0]:
            raise ValueError(f"a joint moment of size {moment.shape[0]} does not fit layers "
                             f"{layers} of key sizes {sizes}")
        size = moment.shape[0]
        preserved = torch.zeros(size, size, dtype=torch.float64) if preserve else None
        return cls(layers, sizes, LayerContext(second_moment=moment, lam=lam,
                                               preserved=preserved))

    def stacked(self, keys: dict[int, torch.Tensor]) -> torch.Tensor | None:
        """Per-layer keys (key, n) of the same groups, stacked (sum of key sizes, n);
        ``None`` when a layer's keys are missing."""
        if any(layer not in keys for layer in self.layers):
            return None
        return torch.cat([keys[layer].to(keys[self.layers[0]].device) for layer in self.layers])

    def hold(self, keys: dict[int, torch.Tensor], sign: float = 1.0) -> None:
        """Add ``sign K~ K~^T`` of per-layer ``keys`` to the held product (``-1`` lets go
        of keys held before)."""
        if self.context.preserved is None or not keys:
            return
        stacked = self.stacked(keys)
        if stacked is None:
            log.warning("keys of layers %s ignored: the joint spread holds keys of every "
                        "edit layer %s (the edit layers changed since they were saved)",
                        sorted(keys), self.layers)
            return
        self.context.hold(stacked, sign)

    def spread(self, loaded: LoadedModel, prompts: list[tuple[str, str]],
               targets: torch.Tensor, contexts: list[str], *,
               protected: Sequence[tuple[str, str]] = (),
               released: dict[int, torch.Tensor] | None = None,
               lead_layers: Sequence[int] = (),
               ) -> tuple[ModelDelta, dict[int, torch.Tensor], torch.Tensor]:
        """The update carrying the last edit layer's outputs on ``prompts`` (template,
        subject) to ``targets`` (facts, hidden), keys read from the model as it is.

        ``protected`` and ``released`` are as for ``spread.spread``, whose answer this
        has the form of: the delta, the keys used at each layer and each key group's
        fact. ``lead_layers``: the layers whose leading tokens' outputs are held in
        place (``spread.holds_lead``), as one stacked key with zeros at the others.
        """
        # The model does not change while the joint spread reads it: one pass reads
        # every layer's keys.
        states = subject_states_by_layer(loaded, prompts, self.layers, self.layers[-1],
                                         contexts)
        last = states[self.layers[-1]]
        residual = (targets.to(last.outputs) - last.outputs)[last.owners].T  # (hidden, groups)
        keys = {layer: state.keys for layer, state in states.items()}
        neighbours: dict[int, torch.Tensor] = {}
        if protected:
            read = subject_states_by_layer(loaded, list(protected), self.layers,
                                           self.layers[-1], [""])
            neighbours = {layer: state.keys for layer, state in read.items()}
        lead = lead_keys(loaded, self.layers) if lead_layers else {}
        if lead:
            neighbours = {layer: held_keys(neighbours.get(layer),
                                           keys if layer in lead_layers else torch.zeros_like(keys))
                          for layer, keys in lead.items()}
        let_go = self.stacked(released) if released else None
        if released and let_go is None:
            log.warning("released keys of layers %s ignored: the joint spread needs those of "
                        "every edit layer %s", sorted(released), self.layers)
        system = self.context.memit_system(last.keys.device)
        update = memit_update(self.stacked(keys), residual, system, self.stacked(neighbours),
                              let_go)
        parts = update.down.split(self.sizes)
        delta = ModelDelta(
            layers={loaded.spec.mlp_out_path(layer): LayerDelta(up=update.up,
                                                                down=part.contiguous())
                    for layer, part in zip(self.layers, parts, strict=True)},
            layout=loaded.spec.weight_layout)
        return delta, keys, last.owners


def joint_lambda(statistics: dict[int, KeyStatistics], moment: torch.Tensor,
                 update_fraction: float) -> float:
    """Lambda moving a typical stacked key by ``update_fraction`` of its residual, as
    the per-layer spread derives its own: ``q (1 - f) / f``, q the median of
    ``k~^T C~^-1 k~`` over the statistics' sampled keys (the same tokens at every
    layer), stacked."""
    layers = sorted(statistics)
    sample = torch.cat([statistics[layer].sample for layer in layers], dim=1)
    stacked = KeyStatistics(second_moment=moment.double(), count=1, sample=sample)
    return stacked.median_mahalanobis() * (1 - update_fraction) / update_fraction
