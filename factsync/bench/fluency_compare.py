"""``factsync bench fluency``: saved deltas' perplexity ratios side by side.

Each delta is applied alone to the unedited model and its perplexity on the same texts
is set against the unedited model's and, paired text by text, against the first
delta's. Pairing takes out which texts happen to be measured, so two runs' deltas can be
told apart with far fewer texts than their ratios against the unedited model need.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from factsync.editing.delta import ModelDelta, applied
from factsync.evaluation.fluency import perplexity_ratio, text_nlls
from factsync.evaluation.intervals import Interval, format_interval
from factsync.models.loading import LoadedModel


@dataclass(frozen=True)
class DeltaFluency:
    """One delta's perplexity on the texts.

    Attributes:
        delta: the delta file.
        ratio: its perplexity over the unedited model's, with the 95% bootstrap interval
            over the texts.
        over_first: its perplexity over the first delta's, paired over the texts; the
            first delta's own is 1.
    """

    delta: Path
    ratio: Interval
    over_first: Interval

    def to_json(self) -> dict:
        """Each ratio as ``[mean, low, high]``."""
        return {"delta": str(self.delta), "perplexity_ratio": self.ratio.as_list(),
                "over_first": self.over_first.as_list()}


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


def compare_fluency(loaded: LoadedModel, deltas: Sequence[Path],
                    texts: list[str]) -> FluencyComparison:
    """Measure each delta file in ``deltas`` (read one at a time) on ``texts``; one pass
    over the texts per delta and one unedited. Leaves the model as it found it."""
    if not deltas:
        raise ValueError("no deltas to compare")
    base = text_nlls(loaded, texts)
    passes = []
    for path in tqdm(deltas, desc="deltas", unit="delta"):
        with applied(loaded, ModelDelta.load(path)):
            passes.append(text_nlls(loaded, texts))
    rows = [DeltaFluency(path, perplexity_ratio(measured, base),
                         perplexity_ratio(measured, passes[0]))
            for path, measured in zip(deltas, passes, strict=True)]
    return FluencyComparison(len(texts), sum(tokens for _, tokens in base), rows)


def format_fluency(comparison: FluencyComparison) -> str:
    """The comparison as a line on the texts, then a table, one row per delta."""
    rows = comparison.rows
    width = max(len(str(row.delta)) for row in rows)
    lines = [f"{comparison.texts} texts, {comparison.tokens} scored tokens",
             f"{'delta':<{width}} | perplexity ratio      | over the first delta",
             f"{'-' * width} | --------------------- | ---------------------"]
    for row in rows:
        lines.append(f"{str(row.delta):<{width}} | {format_interval(row.ratio):<21} | "
                     f"{format_interval(row.over_first)}")
    return "\n".join(lines)
