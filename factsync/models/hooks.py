"""Hooks on a model, only through context managers that always remove them.

Decoder layers return a tensor in transformers 5.x and a tuple in older releases; every
helper here reads and writes the hidden state through ``hidden_of``/``with_hidden`` so
both work.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import torch
from torch import nn

from factsync.models.loading import LoadedModel
from factsync.models.specs import get_module


def hidden_of(output: Any) -> torch.Tensor:
    """The hidden-state tensor of a layer's output (tensor or tuple)."""
    return output if isinstance(output, torch.Tensor) else output[0]


def with_hidden(output: Any, hidden: torch.Tensor) -> Any:
    """``output`` with its hidden state replaced, keeping its type."""
    if isinstance(output, torch.Tensor):
        return hidden
    return (hidden, *output[1:])


@contextmanager
def forward_hooks(
    model: nn.Module, hooks: dict[str, Callable[..., Any]], *, pre: bool = False
) -> Iterator[None]:
    """Register forward (or forward-pre) hooks by module path; remove them on exit."""
    handles = []
    try:
        for path, hook in hooks.items():
            module = get_module(model, path)
            register = module.register_forward_pre_hook if pre else module.register_forward_hook
            handles.append(register(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def capture_keys(loaded: LoadedModel, layers: list[int]) -> Iterator[dict[int, torch.Tensor]]:
    """Record the input of each layer's MLP output projection: the editing keys.

    Yields a dict filled on every forward pass with layer -> (batch, tokens, key size).
    """
    captured: dict[int, torch.Tensor] = {}

    def recorder(layer: int) -> Callable[..., None]:
        def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
            captured[layer] = args[0]

        return hook

    paths = {loaded.spec.mlp_out_path(layer): recorder(layer) for layer in layers}
    with forward_hooks(loaded.model, paths, pre=True):
        yield captured


@contextmanager
def capture_hidden(loaded: LoadedModel, layers: list[int]) -> Iterator[dict[int, torch.Tensor]]:
    """Record each layer's output hidden state: layer -> (batch, tokens, hidden)."""
    captured: dict[int, torch.Tensor] = {}

    def recorder(layer: int) -> Callable[..., None]:
        def hook(_module: nn.Module, _args: tuple[Any, ...], output: Any) -> None:
            captured[layer] = hidden_of(output)

        return hook

    paths = {loaded.spec.layer_path(layer): recorder(layer) for layer in layers}
    with forward_hooks(loaded.model, paths):
        yield captured


@contextmanager
def add_at_positions(
    loaded: LoadedModel,
    layer: int,
    delta_for_rows: Callable[[], tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
) -> Iterator[None]:
    """Add vectors to a layer's output hidden state at chosen (row, position) pairs.

    ``delta_for_rows`` is called on every forward pass and returns (rows, positions,
    vectors) with vectors of shape (len(rows), hidden); the addition is differentiable.
    """

    def hook(_module: nn.Module, _args: tuple[Any, ...], output: Any) -> Any:
        hidden = hidden_of(output)
        rows, positions, vectors = delta_for_rows()
        shifted = hidden.index_put((rows, positions), vectors.to(hidden.dtype), accumulate=True)
        return with_hidden(output, shifted)

    with forward_hooks(loaded.model, {loaded.spec.layer_path(layer): hook}):
        yield


class _Replay(nn.Module):
    """Stands in for a decoder layer: passes hidden states through, or replays a cache."""

    def __init__(self, replay: torch.Tensor | None) -> None:
        super().__init__()
        self.replay = replay

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return hidden_states if self.replay is None else self.replay


@contextmanager
def replay_below(loaded: LoadedModel, layer: int) -> Iterator[_Replay]:
    """Skip decoder layers ``0..layer``; layer ``layer`` replays a cached output.

    The layers below an edit point are frozen while a target vector is optimised, so
    their output is computed once and replayed instead of recomputed every step. Yields
    the stand-in for ``layer``: set its ``replay`` to the (batch, tokens, hidden) tensor
    to feed layer ``layer + 1`` before each forward pass. Hooks on
    ``spec.layer_path(layer)`` registered inside this context see the replayed output.
    Decoder layers return plain tensors from transformers 5 on, as the stand-in does.
    """
    layers = get_module(loaded.model, loaded.spec.layers_path)
    originals = [layers[index] for index in range(layer + 1)]
    try:
        for index in range(layer + 1):
            layers[index] = _Replay(torch.empty(0) if index == layer else None)
        yield layers[layer]
    finally:
        for index, original in enumerate(originals):
            layers[index] = original


class _LayerReached(Exception):
    """Raised by ``forward_through`` to end a forward pass at a layer."""


def forward_through(loaded: LoadedModel, layer: int, **inputs: Any) -> None:
    """Run the decoder stack on ``inputs`` up to and including decoder ``layer`` only.

    For passes that only read states at or below ``layer`` (keys, hidden states):
    the layers above it and the vocabulary projection are never run. Capture hooks on
    ``layer`` must be registered before the call; they run before the pass ends.
    """

    def stop(_module: nn.Module, _args: tuple[Any, ...], _output: Any) -> None:
        raise _LayerReached

    with forward_hooks(loaded.model, {loaded.spec.layer_path(layer): stop}), suppress(
        _LayerReached
    ):
        loaded.model.base_model(**inputs)


@contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[None]:
    """Turn off gradients for every parameter during a block, then restore the flags.

    Back-propagation then stops at the first tensor that needs a gradient (the edit
    vector), instead of filling weight gradients nobody reads.
    """
    flags = [(param, param.requires_grad) for param in model.parameters()]
    try:
        for param, _ in flags:
            param.requires_grad_(False)
        yield
    finally:
        for param, flag in flags:
            param.requires_grad_(flag)
