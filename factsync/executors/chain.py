"""``DeltaChain``: the live version's deltas as executors follow them, in bounded memory.

Each version's delta is small (its rank is about the facts of one job), but a daemon
promotes thousands of them, and a worker that joins late must rebuild the live weights
from the chain. Composed factors would outgrow the weights themselves, so once the
chain's factors pass twice the size of full-rank factors of the updates they stand for,
every step so far is folded into one whose layers are at most full rank
(``ModelDelta.compacted``): the chain then holds at most twice that size.

A fold replaces the chain's first label, so a worker that followed the old chain starts
again from its base weights: once per fold, not once per promotion. Folding is exact
up to float rounding; the daemon's own models are rebuilt from the version files, not
from the folded chain.
"""

from __future__ import annotations

from factsync.editing.delta import ModelDelta
from factsync.executors.local import Chain

FOLD_LABEL = "up to {}"
"""The label of a fold: the label of the last step it holds."""


class DeltaChain:
    """Labelled deltas applied in order on the base weights (an executor's ``Chain``)."""

    def __init__(self) -> None:
        self._steps: list[tuple[str, ModelDelta]] = []

    @property
    def steps(self) -> Chain:
        """The steps, oldest first, each with a label unique in the chain."""
        return list(self._steps)

    def append(self, label: str, delta: ModelDelta) -> None:
        """Add ``delta`` under ``label`` after the others, folding them all into one
        step when the chain's factors have grown past twice their full-rank size."""
        if any(label == existing for existing, _ in self._steps):
            raise ValueError(f"label {label!r} is already in the chain")
        self._steps.append((label, delta))
        if len(self._steps) > 1 and self._size() > 2 * self._full_rank_size():
            self._steps = [(FOLD_LABEL.format(label), self.whole())]

    def whole(self) -> ModelDelta:
        """Every step composed into one delta, no layer above full rank.

        Raises:
            ValueError: the chain is empty.
        """
        if not self._steps:
            raise ValueError("an empty chain has no delta")
        whole = self._steps[0][1]
        for _, step in self._steps[1:]:
            whole = whole.compose(step)
        return whole.compacted()

    def _size(self) -> int:
        return sum(delta.size for _, delta in self._steps)

    def _full_rank_size(self) -> int:
        """Entries of factors of rank min(value, key) for every layer the chain edits."""
        sides = {path: (update.up.shape[0], update.down.shape[0])
                 for _, delta in self._steps for path, update in delta.layers.items()}
        return sum(min(values, keys) * (values + keys) for values, keys in sides.values())
