"""``factsync bench damage``: where a delta's harm to fluency comes from, layer by layer.

MEMIT keeps each layer's update small on ordinary text one layer at a time: its penalty
is the update's output on the keys the unedited model makes at that layer, as the
key-statistics corpus stands for them. Over a long stream three things escape that
penalty, and this report measures each for a saved delta
(the composed delta of a ``bench lifelong --state`` run, or any delta file):

- the keys move: edits of lower layers change the keys a layer sees on ordinary text, so
  each layer's output change is measured on the unedited model's keys and again on the
  keys the edited model makes;
- the corpus is not the text: each layer's output change is measured on the fluency
  texts' own keys too, beside how far those keys lean on directions the corpus's
  second moment C holds weak (where MEMIT's penalty is light);
- the start token is not in the corpus's statistics: the keys at the tokens that lead
  every text (``keys.lead_keys``) are set beside the sampled keys, in norm and in
  ``k^T C^-1 k``, and the delta's change of their output is measured;
- the layers' changes add up: every edited layer writes into the same residual stream,
  so the perplexity ratio of all layers together is set beside the product of each
  layer's alone (what it would be if their harms were independent), and each layer is
  also left out in turn.

``interaction_since`` asks the same of a stream's jobs: whether the harm of what a
stream added after an earlier delta of it compounds with the harm of that delta.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
from tqdm import tqdm

from factsync.editing.covariance import KeyStatistics, compute_key_statistics, token_count
from factsync.editing.delta import DeltaError, ModelDelta, applied
from factsync.editing.keys import lead_keys
from factsync.evaluation.fluency import (
    ScoredText,
    perplexity_change,
    perplexity_ratio,
    summed_nlls,
    text_nlls,
    token_nlls,
)
from factsync.evaluation.intervals import Interval
from factsync.models.loading import LoadedModel
from factsync.models.specs import get_module


@dataclass(frozen=True)
class LayerDamage:
    """One edited layer's share of the harm.

    Attributes:
        layer: the decoder layer.
        norm_growth: ``||D||_F / ||W||_F``, D the layer's delta and W its weight before it.
        output_change: ``tr(D C D^T) / tr(W C W^T)``: the energy the delta adds to the
            layer's output on ordinary text against the energy of that output, C the
            second moment of the layer's keys in the unedited model (what MEMIT weighs).
        output_change_edited: the same with C of the keys the edited model makes.
        output_change_texts: the same with C of the fluency texts' keys in the
            unedited model.
        text_mahalanobis: ``tr(C^-1 T) / key size``, T the second moment of the fluency
            texts' keys and C the corpus's: 1 when C stands for the texts' keys, above 1
            when they lean on directions C holds weak (and MEMIT spends freely).
        perplexity_alone: perplexity ratio with only this layer's delta applied.
        perplexity_without: perplexity ratio with every other layer's delta applied.
        lead_key_norm: the largest norm of a leading token's key (``keys.lead_keys``)
            over the median norm of the statistics' sampled keys; ``None`` when nothing
            leads a text.
        lead_mahalanobis: the largest ``k^T C^-1 k`` of a leading token's key over the
            median of the sampled keys'; ``None`` likewise.
        lead_output_change: ``||D K_l|| / ||W K_l||`` (Frobenius), K_l the leading
            tokens' keys: how far the delta moves their output; ``None`` likewise.
    """

    layer: int
    norm_growth: float
    output_change: float
    output_change_edited: float
    output_change_texts: float
    text_mahalanobis: float
    perplexity_alone: float
    perplexity_without: float
    lead_key_norm: float | None = None
    lead_mahalanobis: float | None = None
    lead_output_change: float | None = None


@dataclass(frozen=True)
class DamageReport:
    """A delta's harm per layer and whole.

    Attributes:
        layers: per edited layer, lowest first.
        perplexity_all: perplexity ratio with the whole delta applied.
        perplexity_all_interval: its 95% bootstrap interval over the texts (low, high).
        unedited_tokens: the fluency texts' ``token_nlls`` on the unedited model.
        edited_tokens: the same with the whole delta applied. These two let further
            comparisons of the same texts skip passes already made.
    """

    layers: list[LayerDamage]
    perplexity_all: float
    perplexity_all_interval: tuple[float, float]
    unedited_tokens: list[ScoredText] = field(default_factory=list, repr=False, compare=False)
    edited_tokens: list[ScoredText] = field(default_factory=list, repr=False, compare=False)

    @property
    def perplexity_independent(self) -> float:
        """The ratio the whole delta would give if the layers' harms were independent:
        the product of each layer's alone."""
        return math.prod(row.perplexity_alone for row in self.layers)

    def to_json(self) -> dict:
        """The report as plain JSON values."""
        return {"layers": [asdict(row) for row in self.layers],
                "perplexity_all": self.perplexity_all,
                "perplexity_all_interval": list(self.perplexity_all_interval),
                "perplexity_independent": self.perplexity_independent}


def edited_layers(loaded: LoadedModel, delta: ModelDelta) -> dict[str, int]:
    """The decoder layer of each module ``delta`` edits, lowest first; ``DeltaError``
    when a module is not an MLP output projection of ``loaded``."""
    by_path = {loaded.spec.mlp_out_path(layer): layer for layer in range(loaded.num_layers)}
    unknown = sorted(set(delta.layers) - set(by_path))
    if unknown:
        raise DeltaError(f"the delta edits {', '.join(unknown)}, which are not MLP output "
                         f"projections of {loaded.name}")
    return dict(sorted(((path, by_path[path]) for path in delta.layers),
                       key=lambda item: item[1]))


def measure_damage(
    loaded: LoadedModel,
    delta: ModelDelta,
    statistics: dict[int, KeyStatistics],
    corpus: list[str],
    texts: list[str],
    *,
    token_budget: int,
) -> DamageReport:
    """Measure ``delta``'s harm on ``loaded`` (unedited): perplexity on ``texts``, and
    output changes on the keys of ``corpus`` (``statistics`` are the unedited model's;
    the edited model's are computed over ``token_budget`` tokens of ``corpus``) and on
    the keys of ``texts`` (all their tokens, unedited model).
    Leaves the model as it found it."""
    layers = edited_layers(loaded, delta)
    missing = sorted(set(layers.values()) - set(statistics))
    if missing:
        raise ValueError(f"no key statistics for edited layers {missing}")
    unedited_tokens = token_nlls(loaded, texts)
    base_nlls = summed_nlls(unedited_tokens)
    on_texts = compute_key_statistics(loaded, list(layers.values()), texts,
                                      token_budget=token_count(loaded, texts))
    lead = lead_keys(loaded, list(layers.values()))

    def ratio(paths: list[str]) -> float:
        part = ModelDelta(layers={path: delta.layers[path] for path in paths},
                          layout=delta.layout)
        with applied(loaded, part):
            return perplexity_ratio(text_nlls(loaded, texts), base_nlls).mean

    with applied(loaded, delta):
        # A layer's own delta does not change its keys, only those of the layers above.
        moved = compute_key_statistics(loaded, list(layers.values()), corpus,
                                       token_budget=token_budget)
        edited_tokens = token_nlls(loaded, texts)
    whole = perplexity_ratio(summed_nlls(edited_tokens), base_nlls)
    rows = []
    for path, layer in tqdm(layers.items(), desc="perplexity per layer", unit="layer"):
        change = delta.layers[path].matrix("out_in").double()  # (value, key)
        weight = get_module(loaded.model, path).weight.detach().double()
        weight = weight if loaded.spec.weight_layout == "out_in" else weight.T
        before = statistics[layer].second_moment.double()
        after = moved[layer].second_moment.double()
        text_moment = on_texts[layer].second_moment.double()
        energy = _output_energy(weight, before)
        rows.append(LayerDamage(
            layer=layer,
            norm_growth=float(torch.linalg.matrix_norm(change) / torch.linalg.matrix_norm(weight)),
            output_change=_output_energy(change, before) / energy,
            output_change_edited=_output_energy(change, after) / energy,
            output_change_texts=(_output_energy(change, text_moment)
                                 / _output_energy(weight, text_moment)),
            text_mahalanobis=statistics[layer].mahalanobis_per_dimension(text_moment),
            perplexity_alone=ratio([path]),
            perplexity_without=ratio([other for other in layers if other != path]),
            **_lead_readings(lead.get(layer), statistics[layer], change, weight),
        ))
    return DamageReport(layers=rows, perplexity_all=whole.mean,
                        perplexity_all_interval=(whole.low, whole.high),
                        unedited_tokens=unedited_tokens, edited_tokens=edited_tokens)


def perplexity_against(loaded: LoadedModel, edited: Sequence[tuple[float, int]],
                       other: ModelDelta, texts: list[str]) -> Interval:
    """The perplexity on ``texts`` of a delta whose ``text_nlls`` are ``edited`` over
    that with ``other`` applied alone on the unedited ``loaded``, with its paired 95%
    bootstrap interval over the texts: whether two runs' deltas harm fluency
    differently, beyond which texts happen to be measured. Leaves the model as it found
    it."""
    with applied(loaded, other):
        reference = text_nlls(loaded, texts)
    return perplexity_ratio(edited, reference)


@dataclass(frozen=True)
class StreamInteraction:
    """How the harm of a stream's later jobs combines with the harm of its earlier ones.

    Each is a perplexity ratio against the unedited model with its 95% bootstrap
    interval over the texts.

    Attributes:
        earlier: with the earlier delta alone.
        later: with the part added since alone (the whole delta less the earlier).
        whole: with the whole delta.
        interaction: ``whole / (earlier * later)``, paired over the texts: 1 when the
            two parts' harms add in log perplexity, above 1 when they compound.
    """

    earlier: Interval
    later: Interval
    whole: Interval
    interaction: Interval

    def to_json(self) -> dict:
        """Each ratio as ``[mean, low, high]``."""
        return {name: getattr(self, name).as_list()
                for name in ("earlier", "later", "whole", "interaction")}


def interaction_since(loaded: LoadedModel, delta: ModelDelta, earlier: ModelDelta,
                      texts: list[str], *, base: Sequence[tuple[float, int]],
                      whole: Sequence[tuple[float, int]]) -> StreamInteraction:
    """Split ``delta`` (a stream's composed delta) at ``earlier`` (the same stream's at
    an earlier job) and measure on ``texts`` whether the two parts' harms add or
    compound. ``base`` and ``whole`` are the ``text_nlls`` of ``texts`` on the unedited
    model and with ``delta``. Leaves the model as it found it."""
    later = delta.compose(earlier.negated())
    measured = {"whole": whole}
    for name, part in (("earlier", earlier), ("later", later)):
        with applied(loaded, part):
            measured[name] = text_nlls(loaded, texts)
    tokens = [count for _, count in base]
    crossed = [w - e - la + b for (w, _), (e, _), (la, _), (b, _) in zip(
        measured["whole"], measured["earlier"], measured["later"], base, strict=True)]
    return StreamInteraction(
        **{name: perplexity_ratio(nlls, base) for name, nlls in measured.items()},
        interaction=perplexity_change(crossed, tokens))


def _lead_readings(keys: torch.Tensor | None, statistics: KeyStatistics,
                   change: torch.Tensor, weight: torch.Tensor) -> dict[str, float]:
    """``LayerDamage``'s ``lead_*`` fields for the leading tokens' ``keys`` (key, t);
    none when nothing leads a text."""
    if keys is None or keys.shape[1] == 0:
        return {}
    keys = keys.double()
    norms = keys.norm(dim=0)
    sampled_norm = float(statistics.sample.double().norm(dim=1).median())
    return {
        "lead_key_norm": float(norms.max()) / sampled_norm,
        "lead_mahalanobis": float(statistics.relative_mahalanobis(keys.T).max()),
        "lead_output_change": float(torch.linalg.matrix_norm(change @ keys)
                                    / torch.linalg.matrix_norm(weight @ keys)),
    }


def _output_energy(matrix: torch.Tensor, second_moment: torch.Tensor) -> float:
    """``tr(M C M^T)``: the mean squared norm of ``M k`` over keys of second moment C."""
    return float(((matrix @ second_moment.to(matrix)) * matrix).sum())


def format_damage(report: DamageReport) -> str:
    """The report as a table, then the whole delta against independent layers."""
    lines = [
        "layer | norm growth | output change | on moved keys | on text keys | "
        "text k'C^-1k/d | ppl ratio alone | ppl ratio without",
        "----- | ----------- | ------------- | ------------- | ------------ | "
        "-------------- | --------------- | -----------------",
    ]
    for row in report.layers:
        lines.append(f"{row.layer:<5} | {row.norm_growth:<11.3f} | {row.output_change:<13.4f} | "
                     f"{row.output_change_edited:<13.4f} | {row.output_change_texts:<12.4f} | "
                     f"{row.text_mahalanobis:<14.3f} | {row.perplexity_alone:<15.4f} | "
                     f"{row.perplexity_without:.4f}")
    lines += _format_lead(report.layers)
    low, high = report.perplexity_all_interval
    lines.append(f"all layers: perplexity ratio {report.perplexity_all:.4f} [{low:.4f}, "
                 f"{high:.4f}]; the product of "
                 f"the layers alone {report.perplexity_independent:.4f} (independent harms "
                 "would give that)")
    return "\n".join(lines)


def _format_lead(rows: list[LayerDamage]) -> list[str]:
    """The leading tokens' rows, or nothing when no text has leading tokens."""
    if all(row.lead_key_norm is None for row in rows):
        return []
    lines = ["",
             "start token: layer | key norm / median | k'C^-1k / median | output change",
             "------------------ | ----------------- | ---------------- | -------------"]
    lines += [f"{row.layer:<18} | {row.lead_key_norm:<17.2f} | {row.lead_mahalanobis:<16.2f} | "
              f"{row.lead_output_change:.4f}" for row in rows if row.lead_key_norm is not None]
    return lines + [""]
