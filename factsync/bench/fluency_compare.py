"""``factsync bench fluency``: saved deltas' perplexity ratios side by side.

Each delta is applied alone to the unedited model and its perplexity on the same texts
is set against the unedited model's and, paired text by text, against the first
delta's. Pairing takes out which texts happen to be measured, so two runs' deltas can be
told apart with far fewer texts than their ratios against the unedited model need.

With ``lead``, each delta is also read at the tokens that lead every text (the start
token): how much the first scored token's NLL changed, which only those positions
predict, and the ratio with each edited layer's MLP output there held to the unedited
model's. The key statistics leave those positions out, so a stream's edits can move
them unchecked; this says how much of a delta's harm that is.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from factsync.bench.damage import edited_layers
from factsync.editing.covariance import lead_ids
from factsync.editing.delta import ModelDelta, applied
from factsync.editing.keys import lead_keys
from factsync.evaluation.fluency import (
    ScoredText,
    first_and_later_change,
    perplexity_ratio,
    summed_nlls,
    token_nlls,
)
from factsync.evaluation.intervals import Interval, format_interval
from factsync.models.hooks import forward_hooks
from factsync.models.loading import LoadedModel
from factsync.models.specs import get_module


@dataclass(frozen=True)
class DeltaFluency:
    """One delta's perplexity on the texts.

    Attributes:
        delta: the delta file.
        ratio: its perplexity over the unedited model's, with the 95% bootstrap interval
            over the texts.
        over_first: its perplexity over the first delta's, paired over the texts; the
            first delta's own is 1.
        lead: how it reads at the start token, when asked for.
    """

    delta: Path
    ratio: Interval
    over_first: Interval
    lead: LeadReading | None = None

    def to_json(self) -> dict:
        """Each ratio as ``[mean, low, high]``."""
        numbers = {"delta": str(self.delta), "perplexity_ratio": self.ratio.as_list(),
                   "over_first": self.over_first.as_list()}
        if self.lead is not None:
            numbers |= {"first_token_nll_change": self.lead.first_token_change,
                        "later_tokens_nll_change": self.lead.later_change,
                        "perplexity_ratio_lead_held": self.lead.held.as_list()}
        return numbers


@dataclass(frozen=True)
class LeadReading:
    """One delta at the tokens that lead every text.

    Attributes:
        first_token_change: the change of the first scored token's NLL, summed over the
            texts (nats): what moving the start positions did to what they alone predict.
        later_change: the same summed over every later scored token.
        held: the perplexity ratio over the unedited model's with each edited layer's MLP
            output at the start positions held to the unedited model's.
    """

    first_token_change: float
    later_change: float
    held: Interval


@dataclass(frozen=True)
class FluencyComparison:
    """Deltas measured on the same texts.

    Attributes:
        texts: how many texts.
        tokens: how many tokens of them were scored.
        rows: per delta, in the order given.
    """

    texts: int
    tokens: int
    rows: list[DeltaFluency]

    def to_json(self) -> dict:
        """The comparison as plain JSON values."""
        return {"texts": self.texts, "tokens": self.tokens,
                "deltas": [row.to_json() for row in self.rows]}


def compare_fluency(loaded: LoadedModel, deltas: Sequence[Path], texts: list[str], *,
                    lead: bool = False) -> FluencyComparison:
    """Measure each delta file in ``deltas`` (read one at a time) on ``texts``; one pass
    over the texts per delta and one unedited, and with ``lead`` one more per delta
    (``LeadReading``). Leaves the model as it found it."""
    if not deltas:
        raise ValueError("no deltas to compare")
    if lead and not lead_ids(loaded):
        raise ValueError(f"no token leads every text of {loaded.name}: nothing to read there")
    unedited = token_nlls(loaded, texts)
    base = summed_nlls(unedited)
    passes, readings = [], []
    for path in tqdm(deltas, desc="deltas", unit="delta"):
        delta = ModelDelta.load(path)
        layers = list(edited_layers(loaded, delta).values())
        held_outputs = lead_outputs(loaded, layers) if lead else {}
        with applied(loaded, delta):
            edited = token_nlls(loaded, texts)
            passes.append(summed_nlls(edited))
            if lead:
                with lead_outputs_held(loaded, held_outputs):
                    held = summed_nlls(token_nlls(loaded, texts))
                readings.append(_lead_reading(unedited, edited, perplexity_ratio(held, base)))
    rows = [DeltaFluency(path, perplexity_ratio(measured, base),
                         perplexity_ratio(measured, passes[0]),
                         readings[index] if lead else None)
            for index, (path, measured) in enumerate(zip(deltas, passes, strict=True))]
    return FluencyComparison(len(texts), sum(tokens for _, tokens in base), rows)


def lead_outputs(loaded: LoadedModel, layers: list[int]) -> dict[int, torch.Tensor]:
    """Each of ``layers``' MLP outputs (lead tokens, hidden) at the tokens that lead every
    text, from the model as it is now: its output projection applied to ``lead_keys``."""
    outputs = {}
    for layer, keys in lead_keys(loaded, layers).items():
        projection = get_module(loaded.model, loaded.spec.mlp_out_path(layer))
        with torch.no_grad():
            outputs[layer] = projection(keys.T.to(projection.weight))
    return outputs


@contextmanager
def lead_outputs_held(loaded: LoadedModel, outputs: dict[int, torch.Tensor]) -> Iterator[None]:
    """While inside, each layer's MLP output at the first positions of every sequence is
    ``outputs[layer]`` (``lead_outputs``), whatever the weights; the sequences must start
    with the lead tokens."""
    def holder(layer: int) -> Any:
        def hook(_module: torch.nn.Module, _args: tuple[Any, ...],
                 output: torch.Tensor) -> torch.Tensor:
            held = output.clone()
            held[:, : outputs[layer].shape[0]] = outputs[layer].to(held)
            return held
        return hook

    with forward_hooks(loaded.model, {loaded.spec.mlp_out_path(layer): holder(layer)
                                      for layer in outputs}):
        yield


def _lead_reading(unedited: Sequence[ScoredText], edited: Sequence[ScoredText],
                  held: Interval) -> LeadReading:
    first, later = first_and_later_change(unedited, edited)
    return LeadReading(first_token_change=first, later_change=later, held=held)


def format_fluency(comparison: FluencyComparison) -> str:
    """The comparison as a line on the texts, then a table, one row per delta."""
    rows = comparison.rows
    width = max(len(str(row.delta)) for row in rows)
    lead = rows[0].lead is not None
    extra = (" | first token (nats) | later tokens (nats) | start token held"
             if lead else "")
    lines = [f"{comparison.texts} texts, {comparison.tokens} scored tokens",
             (f"{'delta':<{width}} | perplexity ratio      | over the first delta " + extra)
             .rstrip(),
             f"{'-' * width} | --------------------- | ---------------------"
             + (" | ------------------ | ------------------- | ----------------"
                if lead else "")]
    for row in rows:
        line = (f"{str(row.delta):<{width}} | {format_interval(row.ratio):<21} | "
                f"{format_interval(row.over_first):<21}")
        if row.lead is not None:
            line += (f" | {row.lead.first_token_change:<+18.1f} | "
                     f"{row.lead.later_change:<+19.1f} | {format_interval(row.lead.held)}")
        lines.append(line.rstrip())
    return "\n".join(lines)
