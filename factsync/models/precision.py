"""The precision policy: edited weights stay in float32 in a bf16 or fp16 model.

An edit adds a low-rank update to a few weight matrices. Added into bf16 weights it is
rounded to bf16's 8 bits of mantissa: a small later correction (a second IME pass, the
spread's share for one fact among many) rounds away, and removing a delta by
subtraction is no longer exact. ``keep_in_float32`` holds those few matrices (the MLP
output projections of the edit layers) in float32. The module computes in float32 and
hands its output back in the model's dtype, so the rest of the model runs as loaded,
and every copy of the model (the served one is a deep copy) carries the same float32
weights: what is measured is what is served.

The hooks stay for the model's life: they are part of how the model computes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from factsync.models.loading import LoadedModel
from factsync.models.specs import get_module

OUTPUT_DTYPE = "_factsync_output_dtype"
"""Attribute of a module held in float32: the dtype its output goes back to."""


def keep_in_float32(loaded: LoadedModel, paths: Iterable[str]) -> list[str]:
    """Hold the weights of the modules at ``paths`` in float32; the paths changed.

    Nothing changes in a float32 model, or for a module already held.
    """
    dtype = next(loaded.model.parameters()).dtype
    if dtype == torch.float32:
        return []
    changed = []
    for path in paths:
        module = get_module(loaded.model, path)
        if hasattr(module, OUTPUT_DTYPE):
            continue
        module.float()
        setattr(module, OUTPUT_DTYPE, dtype)
        module.register_forward_pre_hook(_inputs_in_float32)
        module.register_forward_hook(_output_in_model_dtype)
        changed.append(path)
    return changed


def keep_edit_layers_in_float32(loaded: LoadedModel, layers: Sequence[int] | None) -> list[str]:
    """``keep_in_float32`` for the MLP output projections of ``layers`` (``None``: the
    default edit window); the paths changed."""
    chosen = layers if layers is not None else loaded.default_layers
    return keep_in_float32(loaded, [loaded.spec.mlp_out_path(layer) for layer in chosen])


def held_in_float32(module: nn.Module) -> bool:
    """Whether ``keep_in_float32`` holds ``module``."""
    return hasattr(module, OUTPUT_DTYPE)


def _inputs_in_float32(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a
                 for a in args)


def _output_in_model_dtype(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
    return output.to(getattr(module, OUTPUT_DTYPE))
