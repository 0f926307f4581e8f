"""Architecture specs: layer selection, layout checks, unknown families."""

from __future__ import annotations

import pytest
from transformers import AutoModelForCausalLM, BertConfig

from factsync.models.loading import load_model
from factsync.models.specs import (
    SPECS,
    UnsupportedArchitectureError,
    check_layout,
    get_module,
    key_value_dims,
    spec_for,
)


@pytest.mark.parametrize(
    ("model_type", "num_layers", "hidden_size", "expected"),
    [
        ("llama", 30, 576, [2, 3, 4, 5, 6]),  # SmolLM2-135M: its measured window
        ("llama", 30, 960, [4, 5, 6, 7, 8]),  # another shape of that depth: the family's
        ("llama", 32, 4096, [4, 5, 6, 7, 8]),  # Llama-2-7B, as in MEMIT
        ("gptj", 28, 4096, [3, 4, 5, 6, 7]),
        ("gpt2", 48, 1600, [13, 14, 15, 16, 17]),  # GPT-2 XL, as in MEMIT
        ("gpt2", 4, 32, [1]),
        ("gpt_neox", 4, 32, [0]),
        ("qwen2", 2, None, [0]),
    ],
)
def test_default_layers_by_family_depth_and_shape(model_type, num_layers, hidden_size, expected):
    assert spec_for(model_type).default_layers(num_layers, hidden_size) == expected


def test_default_layers_always_fit_the_model():
    for spec in SPECS:
        for depth in range(1, 80):
            layers = spec.default_layers(depth)
            assert layers and layers[0] >= 0 and layers[-1] < depth
        for window in spec.measured_windows:
            layers = spec.default_layers(window.num_layers, window.hidden_size)
            assert layers == sorted(set(layers)) and layers[-1] < window.num_layers


@pytest.mark.real_model
def test_the_shipped_model_gets_its_measured_window():
    assert load_model("default", device="cpu").default_layers == [2, 3, 4, 5, 6]


def test_unknown_architecture_says_how_to_add_one():
    with pytest.raises(UnsupportedArchitectureError, match="add an ArchitectureSpec"):
        spec_for("bert")


def test_every_family_locates_its_modules(tiny_loaded, tiny_family):
    loaded = tiny_loaded(tiny_family)
    hidden = loaded.model.config.hidden_size
    for layer in range(loaded.num_layers):
        key_size, value_size = key_value_dims(
            loaded.spec, get_module(loaded.model, loaded.spec.mlp_out_path(layer))
        )
        assert value_size == hidden and key_size > hidden


def test_wrong_layout_is_caught_before_any_edit(tiny_loaded):
    loaded = tiny_loaded("gpt2")
    wrong = type(loaded.spec)(**{**vars(loaded.spec), "weight_layout": "out_in"})
    with pytest.raises(UnsupportedArchitectureError, match=r"mlp\.c_proj has weight shape"):
        check_layout(wrong, loaded.model, loaded.model.config.hidden_size)


def test_missing_module_is_named():
    model = AutoModelForCausalLM.from_config(
        BertConfig(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            is_decoder=True,
        )
    )
    with pytest.raises(UnsupportedArchitectureError, match="model.layers"):
        check_layout(spec_for("llama"), model, 32)
