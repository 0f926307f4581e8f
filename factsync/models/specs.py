"""Architecture specs: where each model family keeps the modules that editing touches.

Differences between families are data here, not branches in the engine. Adding a family
means adding one ``ArchitectureSpec`` to ``SPECS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

WeightLayout = Literal["out_in", "in_out"]


class UnsupportedArchitectureError(ValueError):
    """The model's family has no spec, or its modules do not look as the spec says."""


@dataclass(frozen=True)
class MeasuredWindow:
    """Edit layers measured to serve one model shape better than its family's default.

    Attributes:
        num_layers: decoder layers of the models it is for.
        hidden_size: ... and their hidden size.
        layers: the edit layers.
    """

    num_layers: int
    hidden_size: int
    layers: tuple[int, ...]


@dataclass(frozen=True)
class ArchitectureSpec:
    """How one model family is laid out.

    Attributes:
        family: readable family name.
        model_types: ``config.model_type`` values this spec covers.
        layers_path: dotted path of the ``ModuleList`` of decoder layers.
        mlp_out_template: dotted path of layer ``{}``'s MLP output projection, the
            key-value memory that editing rewrites.
        weight_layout: ``"out_in"`` for ``nn.Linear`` (weight is (out, in));
            ``"in_out"`` for GPT-2's ``Conv1D`` (weight is (in, out)).
        layer_start_fraction: first default edit layer as a fraction of model depth.
        layer_count: number of consecutive default edit layers (capped by depth).
        prefix_candidates: tokens to put before every prompt when the tokenizer adds no
            start token itself; the first one in the vocabulary wins. Models trained with
            a document separator degenerate without it.
        measured_windows: edit layers that replace the default window for models of
            the family with that shape.
    """

    family: str
    model_types: tuple[str, ...]
    layers_path: str
    mlp_out_template: str
    weight_layout: WeightLayout
    layer_start_fraction: float
    layer_count: int = 5
    prefix_candidates: tuple[str, ...] = ("<|endoftext|>",)
    measured_windows: tuple[MeasuredWindow, ...] = ()

    def mlp_out_path(self, layer: int) -> str:
        """Dotted module path of the MLP output projection of ``layer``."""
        return self.mlp_out_template.format(layer)

    def layer_path(self, layer: int) -> str:
        """Dotted module path of decoder layer ``layer``."""
        return f"{self.layers_path}.{layer}"

    def default_layers(self, num_layers: int, hidden_size: int | None = None) -> list[int]:
        """Default edit layers for a model of ``num_layers`` decoder layers: the measured
        window for its shape where there is one, else ``layer_count`` layers from
        ``layer_start_fraction`` of its depth."""
        for window in self.measured_windows:
            if (window.num_layers, window.hidden_size) == (num_layers, hidden_size):
                return list(window.layers)
        count = max(1, min(self.layer_count, num_layers // 4 or 1))
        start = min(round(num_layers * self.layer_start_fraction), num_layers - count)
        return list(range(max(0, start), max(0, start) + count))


SPECS: tuple[ArchitectureSpec, ...] = (
    ArchitectureSpec(
        family="llama",
        model_types=("llama", "mistral", "qwen2", "qwen3"),
        layers_path="model.layers",
        mlp_out_template="model.layers.{}.mlp.down_proj",
        weight_layout="out_in",
        # MEMIT-style edits on Llama models work best in the lower third (4-8 of 32).
        layer_start_fraction=0.125,
        prefix_candidates=("<|endoftext|>", "<s>", "<|begin_of_text|>"),
        # SmolLM2-135M: edits at layers 2-6 cost ordinary text less than at 4-8 for edits
        # as strong (bench/README.md, "Edit layers 2-6 and an unshrunk key second
        # moment"), and held the 1,000-fact stream's bars there.
        measured_windows=(MeasuredWindow(num_layers=30, hidden_size=576,
                                         layers=(2, 3, 4, 5, 6)),),
    ),
    ArchitectureSpec(
        family="gpt2",
        model_types=("gpt2",),
        layers_path="transformer.h",
        mlp_out_template="transformer.h.{}.mlp.c_proj",
        weight_layout="in_out",
        # GPT-2 XL edits layers 13-17 of 48 in the MEMIT paper.
        layer_start_fraction=0.27,
    ),
    ArchitectureSpec(
        family="gptj",
        model_types=("gptj",),
        layers_path="transformer.h",
        mlp_out_template="transformer.h.{}.mlp.fc_out",
        weight_layout="out_in",
        # GPT-J edits layers 3-8 of 28 in the MEMIT paper.
        layer_start_fraction=0.11,
    ),
    ArchitectureSpec(
        family="gpt_neox",
        model_types=("gpt_neox",),
        layers_path="gpt_neox.layers",
        mlp_out_template="gpt_neox.layers.{}.mlp.dense_4h_to_h",
        weight_layout="out_in",
        layer_start_fraction=0.1,
    ),
)


def spec_for(model_type: str) -> ArchitectureSpec:
    """The spec covering ``model_type``; raises with instructions when there is none."""
    for spec in SPECS:
        if model_type in spec.model_types:
            return spec
    known = ", ".join(sorted(t for s in SPECS for t in s.model_types))
    raise UnsupportedArchitectureError(
        f"no architecture spec for model_type {model_type!r} (supported: {known}); add an "
        "ArchitectureSpec to factsync.models.specs.SPECS naming its decoder layers and "
        "MLP output projection"
    )


def get_module(model: nn.Module, path: str) -> nn.Module:
    """The submodule at dotted ``path``, with an error naming the missing part."""
    try:
        return model.get_submodule(path)
    except AttributeError as exc:
        raise UnsupportedArchitectureError(
            f"module {path!r} not found in {type(model).__name__}: {exc}"
        ) from exc


def key_value_dims(spec: ArchitectureSpec, module: nn.Module) -> tuple[int, int]:
    """(key size, value size) of an MLP output projection, read by the spec's layout."""
    weight = getattr(module, "weight", None)
    if weight is None or weight.dim() != 2:
        raise UnsupportedArchitectureError(
            f"{type(module).__name__} has no 2-D weight; the {spec.family} spec expects a "
            "linear MLP output projection"
        )
    rows, cols = weight.shape
    return (cols, rows) if spec.weight_layout == "out_in" else (rows, cols)


def check_layout(spec: ArchitectureSpec, model: nn.Module, hidden_size: int) -> None:
    """Check that every MLP output projection writes ``hidden_size`` values.

    Raises ``UnsupportedArchitectureError`` saying which module and which sizes differ,
    which catches a spec with the wrong weight layout before any weight is touched.
    """
    layers = get_module(model, spec.layers_path)
    for index in range(len(layers)):
        module = get_module(model, spec.mlp_out_path(index))
        _, value_size = key_value_dims(spec, module)
        if value_size != hidden_size:
            shape = tuple(module.weight.shape)
            raise UnsupportedArchitectureError(
                f"{spec.mlp_out_path(index)} has weight shape {shape}; with layout "
                f"{spec.weight_layout!r} it writes {value_size} values but the model's "
                f"hidden size is {hidden_size}"
            )
