"""Low-rank weight deltas: the only place where editing writes model weights.

A delta holds, per edited module, factors ``up`` (value_size, rank) and ``down``
(key_size, rank) of the update ``up @ down.T`` in (value, key) orientation. Factors make
a delta small to store (rank is at most the number of facts) and exact to compose.

Two ways back:
- ``AppliedDelta.revert()`` copies the saved original tensors back: bit for bit.
- ``ModelDelta.subtract()`` removes a delta by arithmetic when no saved copy exists (a
  delta loaded from disk): exact up to float rounding, within 1e-6 in float32.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from factsync.durable import save_tensors
from factsync.models.loading import LoadedModel
from factsync.models.specs import WeightLayout, get_module, key_value_dims


class DeltaError(ValueError):
    """A delta does not fit the model, is not finite, or its file is unreadable."""


@dataclass
class LayerDelta:
    """The update of one module's weight, as factors ``up @ down.T``.

    Attributes:
        up: (value_size, rank) factor.
        down: (key_size, rank) factor.
    """

    up: torch.Tensor
    down: torch.Tensor

    def __post_init__(self) -> None:
        if self.up.dim() != 2 or self.down.dim() != 2 or self.up.shape[1] != self.down.shape[1]:
            raise DeltaError(
                f"factors must be (value, rank) and (key, rank); got {tuple(self.up.shape)} "
                f"and {tuple(self.down.shape)}"
            )

    @property
    def rank(self) -> int:
        """Number of factor columns (an upper bound on the update's rank)."""
        return self.up.shape[1]

    def matrix(self, layout: WeightLayout) -> torch.Tensor:
        """The dense update in the weight's own orientation, in float32."""
        dense = self.up.float() @ self.down.float().T  # (value, key)
        return dense if layout == "out_in" else dense.T


@dataclass
class ModelDelta:
    """Per-module low-rank updates plus provenance metadata.

    Attributes:
        layers: module path -> its update.
        layout: weight orientation of the edited modules (from the model's spec).
        metadata: free-form strings saved with the delta (engine settings, versions).
    """

    layers: dict[str, LayerDelta]
    layout: WeightLayout
    metadata: dict[str, str] = field(default_factory=dict)

    def is_finite(self) -> bool:
        """True when no factor holds a NaN or infinity."""
        return all(
            bool(torch.isfinite(d.up).all() and torch.isfinite(d.down).all())
            for d in self.layers.values()
        )

    def compose(self, other: ModelDelta) -> ModelDelta:
        """This delta followed by ``other``: factors are concatenated, so it is exact."""
        if other.layout != self.layout:
            raise DeltaError(f"cannot compose a {self.layout} delta with a {other.layout} one")
        merged = dict(self.layers)
        for path, update in other.layers.items():
            mine = merged.get(path)
            merged[path] = (
                update
                if mine is None
                else LayerDelta(
                    up=torch.cat([mine.up, update.up.to(mine.up)], dim=1),
                    down=torch.cat([mine.down, update.down.to(mine.down)], dim=1),
                )
            )
        return ModelDelta(layers=merged, layout=self.layout, metadata=dict(self.metadata))

    def negated(self) -> ModelDelta:
        """The update that undoes this one: composed after it, the two sum to zero."""
        return ModelDelta(layers={path: LayerDelta(up=-u.up, down=u.down)
                                  for path, u in self.layers.items()},
                          layout=self.layout, metadata=dict(self.metadata))

    def compacted(self) -> ModelDelta:
        """The same update with no layer's rank above its weight's smaller side.

        Composing concatenates factors, so a long history's rank grows past the size of
        the weight itself; such a layer becomes its dense matrix times an identity
        factor, exact up to one float64 product's rounding.
        """
        layers = {}
        for path, update in self.layers.items():
            values, keys = update.up.shape[0], update.down.shape[0]
            if update.rank <= min(values, keys):
                layers[path] = update
                continue
            dense = (update.up.double() @ update.down.double().T).to(update.up.dtype)
            identity = torch.eye(min(values, keys), dtype=update.up.dtype,
                                 device=update.up.device)
            layers[path] = (LayerDelta(up=identity, down=dense.T.contiguous()) if values <= keys
                            else LayerDelta(up=dense, down=identity))
        return ModelDelta(layers=layers, layout=self.layout, metadata=dict(self.metadata))

    @property
    def size(self) -> int:
        """The number of factor entries it holds."""
        return sum(u.up.numel() + u.down.numel() for u in self.layers.values())

    def apply(self, loaded: LoadedModel) -> AppliedDelta:
        """Add this delta to the model's weights; the handle reverts it bit for bit.

        Everything is checked before the first weight changes: finiteness, the layout
        against the model's spec, and each factor's size against its module.
        """
        targets = self._checked_targets(loaded)
        originals = {path: weight.detach().clone() for path, (weight, _) in targets.items()}
        with torch.no_grad():
            for weight, update in targets.values():
                weight.add_(update.to(weight.dtype))
        return AppliedDelta(loaded=loaded, originals=originals)

    def subtract(self, loaded: LoadedModel) -> None:
        """Remove this delta from weights it was applied to, by arithmetic."""
        with torch.no_grad():
            for weight, update in self._checked_targets(loaded).values():
                weight.sub_(update.to(weight.dtype))

    def _checked_targets(self, loaded: LoadedModel) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        if not self.is_finite():
            raise DeltaError("delta holds NaN or infinite values; refusing to apply it")
        if self.layout != loaded.spec.weight_layout:
            raise DeltaError(
                f"delta layout {self.layout!r} does not match the {loaded.spec.family} "
                f"model's {loaded.spec.weight_layout!r}"
            )
        targets = {}
        for path, update in self.layers.items():
            module = get_module(loaded.model, path)
            key_size, value_size = key_value_dims(loaded.spec, module)
            if update.up.shape[0] != value_size or update.down.shape[0] != key_size:
                raise DeltaError(
                    f"{path}: delta factors {tuple(update.up.shape)}, {tuple(update.down.shape)}"
                    f" do not fit a module with keys of {key_size} and values of {value_size}"
                )
            dense = update.matrix(self.layout).to(module.weight.device)
            targets[path] = (module.weight, dense)
        return targets

    def save(self, path: Path) -> None:
        """Write the delta as one safetensors file, atomically and durably."""
        tensors: dict[str, torch.Tensor] = {}
        for module, update in self.layers.items():
            tensors[f"{module}::up"] = update.up.detach().contiguous().cpu()
            tensors[f"{module}::down"] = update.down.detach().contiguous().cpu()
        metadata = {"layout": self.layout, "metadata": json.dumps(self.metadata, sort_keys=True)}
        save_tensors(Path(path), tensors, metadata)

    @classmethod
    def load(cls, path: Path) -> ModelDelta:
        """Read a delta written by ``save``; raises ``DeltaError`` on a damaged file."""
        try:
            with safe_open(str(path), framework="pt") as handle:
                stored = handle.metadata() or {}
                tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
            layout = stored["layout"]
            metadata = json.loads(stored.get("metadata", "{}"))
        except (OSError, ValueError, KeyError, SafetensorError) as exc:
            raise DeltaError(f"cannot read delta file {path}: {exc}") from exc
        modules = sorted({name.rsplit("::", 1)[0] for name in tensors})
        try:
            layers = {
                m: LayerDelta(up=tensors[f"{m}::up"], down=tensors[f"{m}::down"]) for m in modules
            }
        except KeyError as exc:
            raise DeltaError(f"delta file {path} lacks tensor {exc}") from exc
        return cls(layers=layers, layout=layout, metadata=metadata)


@dataclass
class AppliedDelta:
    """A delta applied to a model, with the original weights kept to undo it exactly."""

    loaded: LoadedModel
    originals: dict[str, torch.Tensor]

    def revert(self) -> None:
        """Restore every touched weight to its saved original, bit for bit."""
        with torch.no_grad():
            for path, original in self.originals.items():
                get_module(self.loaded.model, path).weight.copy_(original)


@contextmanager
def applied(loaded: LoadedModel, delta: ModelDelta) -> Iterator[None]:
    """Apply ``delta`` for the duration of a block; always revert it on exit."""
    handle = delta.apply(loaded)
    try:
        yield
    finally:
        handle.revert()


@contextmanager
def restored_weights(loaded: LoadedModel, paths: list[str]) -> Iterator[None]:
    """Snapshot the weights of ``paths`` and restore them on exit, bit for bit.

    Lets a driver apply several deltas in turn while computing, and still leave the
    model as it found it.
    """
    snapshot = AppliedDelta(
        loaded=loaded,
        originals={p: get_module(loaded.model, p).weight.detach().clone() for p in paths},
    )
    try:
        yield
    finally:
        snapshot.revert()
