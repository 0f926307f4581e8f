"""A model's fingerprint names its content, not where it was loaded from."""

from __future__ import annotations

import torch

from factsync.models.loading import load_model


def test_the_same_model_in_two_directories_has_one_fingerprint(tiny_loaded, tmp_path):
    loaded = tiny_loaded("llama")
    for name in ("a", "b"):
        loaded.model.save_pretrained(tmp_path / name)
        loaded.tokenizer.save_pretrained(tmp_path / name)
    first = load_model(str(tmp_path / "a"), device="cpu")
    second = load_model(str(tmp_path / "b"), device="cpu")
    assert first.fingerprint == second.fingerprint
    with torch.no_grad():
        second.model.get_submodule(second.spec.mlp_out_path(0)).weight.mul_(2)
    assert load_model(str(tmp_path / "a"), device="cpu").fingerprint == first.fingerprint
    second.model.save_pretrained(tmp_path / "b")
    assert load_model(str(tmp_path / "b"), device="cpu").fingerprint != first.fingerprint
