"""A chain of deltas as a PEFT LoRA adapter: loaded with peft, it gives the edited logits."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import PeftModel

from factsync.editing.lora import lora_factors
from factsync.models.text import PromptSpec, encode
from factsync.registry.exports import ExportDir, write_peft_adapter

TOLERANCE = 1e-4
"""Max |logit difference|: float32 sums of the same update in another order."""


def logits(model, loaded) -> torch.Tensor:  # noqa: ANN001
    batch = encode(loaded, [PromptSpec("The capital of {} is", "France")])
    with torch.no_grad():
        return model(input_ids=batch.input_ids).logits


def test_peft_with_the_adapter_matches_the_edited_model(
    tiny_loaded, tiny_family, random_delta, tmp_path
):
    loaded = tiny_loaded(tiny_family)
    base_dir = tmp_path / "base"
    loaded.model.save_pretrained(base_dir)
    chain = [random_delta(loaded, [1, 2], seed=1), random_delta(loaded, [2, 3], seed=2)]
    edited = copy.deepcopy(loaded)
    for delta in chain:
        delta.apply(edited)

    factors = lora_factors(chain, max_rank=16)
    assert {f.rank for f in factors.values()} <= {2, 4}
    assert max(f.relative_error for f in factors.values()) < 1e-6
    exports = ExportDir(tmp_path / "exports")
    path = exports.write("adapter", "v2", lambda d: write_peft_adapter(
        d, {p: (f.a, f.b) for p, f in factors.items()}, base_model=str(base_dir),
        fan_in_fan_out=loaded.spec.weight_layout == "in_out", metadata={"version": "v2"}))

    base = type(loaded.model).from_pretrained(base_dir).eval()
    unedited = logits(base, loaded)
    with_adapter = PeftModel.from_pretrained(base, path).eval()  # wraps ``base`` in place
    difference = (logits(with_adapter, loaded) - logits(edited.model, edited)).abs().max()
    assert difference < TOLERANCE
    assert (unedited - logits(edited.model, edited)).abs().max() > 100 * TOLERANCE


def test_truncation_reports_its_error_and_keeps_the_top_directions(tiny_loaded, random_delta):
    loaded = tiny_loaded("llama")
    delta = random_delta(loaded, [1], rank=4, seed=3)
    [full] = lora_factors([delta], max_rank=8).values()
    [cut] = lora_factors([delta], max_rank=2).values()
    assert full.rank == 4 and full.relative_error < 1e-6
    assert cut.rank == 2 and 0 < cut.relative_error < 1
    dense = next(iter(delta.layers.values())).matrix("out_in").double()
    singular = torch.linalg.svdvals(dense)
    expected = float(torch.sqrt((singular[2:] ** 2).sum()) / torch.linalg.norm(dense))
    assert cut.relative_error == pytest.approx(expected, rel=1e-4)
