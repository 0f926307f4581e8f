"""Ordinary text's sensitivity to a layer's hidden state, and its cache."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors import safe_open

from factsync.editing import sensitivity
from factsync.editing.build import StatisticsSettings
from factsync.editing.corpus import SHIPPED_CORPORA
from factsync.editing.sensitivity import (
    SENSITIVITY_FORMAT,
    SENSITIVITY_TOKENS,
    SHIPPED_SENSITIVITIES,
    compute_sensitivity,
    sensitivity_for,
)
from factsync.models.hooks import forward_hooks, hidden_of, with_hidden
from factsync.models.specs import spec_for

TEXTS = [
    "The capital of France is Paris and the capital of Italy is Rome.",
    "Danielle Darrieux was a French actress whose mother tongue is French.",
    "LinkedIn is owned by Microsoft, and so is Skype.",
    "Once upon a time, in 1998, scientists found a new city in the north.",
] * 12


def _mean_kl_with_shift(loaded, layer: int, shift: torch.Tensor) -> float:
    """Mean KL of the next-token distributions over ``TEXTS`` from the model's own when
    ``shift`` is added to ``layer``'s output at every token."""
    batch = loaded.tokenizer(TEXTS, return_tensors="pt", padding=True)

    def shifted(_module, _args, output):
        return with_hidden(output, hidden_of(output) + shift)

    with torch.no_grad():
        before = torch.log_softmax(loaded.model(**batch).logits, dim=-1)
        with forward_hooks(loaded.model, {loaded.spec.layer_path(layer): shifted}):
            after = torch.log_softmax(loaded.model(**batch).logits, dim=-1)
    kl = (before.exp() * (before - after)).sum(dim=-1)
    return float(kl[batch["attention_mask"].bool()].mean())


def test_half_the_squared_shift_in_the_metric_predicts_the_cost_to_ordinary_text(
        tiny_loaded):
    loaded = tiny_loaded("llama")
    layer = 1
    sensitivity = compute_sensitivity(loaded, layer, TEXTS, progress=False)
    values, vectors = torch.linalg.eigh(sensitivity)
    length = 0.2 * float(loaded.model.config.hidden_size) ** 0.5
    cost = {}
    for which in (0, -1):  # the least and the most felt direction
        cost[which] = _mean_kl_with_shift(loaded, layer, length * vectors[:, which].float())
        predicted = 0.5 * length**2 * float(values[which])
        assert 0.5 < cost[which] / predicted < 2
    assert cost[-1] > 3 * cost[0]


def test_the_sensitivity_is_a_symmetric_positive_semidefinite_mean(tiny_loaded):
    loaded = tiny_loaded("llama")
    sensitivity = compute_sensitivity(loaded, 2, TEXTS, token_budget=300, progress=False)
    size = loaded.model.config.hidden_size
    assert sensitivity.shape == (size, size) and sensitivity.dtype == torch.float64
    torch.testing.assert_close(sensitivity, sensitivity.T)
    assert torch.linalg.eigvalsh(sensitivity).min() > -1e-12
    # Other sampled labels: another estimate of the same expectation.
    again = compute_sensitivity(loaded, 2, TEXTS, token_budget=300, seed=1, progress=False)
    assert not torch.equal(sensitivity, again)
    assert float((sensitivity - again).norm() / sensitivity.norm()) < 0.5


def test_the_model_is_left_as_found(tiny_loaded):
    loaded = tiny_loaded("llama")
    before = {name: p.detach().clone() for name, p in loaded.model.named_parameters()}
    flags = {name: p.requires_grad for name, p in loaded.model.named_parameters()}
    compute_sensitivity(loaded, 1, TEXTS, token_budget=100, progress=False)
    for name, parameter in loaded.model.named_parameters():
        assert torch.equal(parameter, before[name]) and parameter.grad is None
        assert parameter.requires_grad == flags[name]
    assert not any(m._forward_hooks for m in loaded.model.modules())


def test_bad_arguments_are_refused(tiny_loaded):
    loaded = tiny_loaded("llama")
    with pytest.raises(ValueError, match="outside the model"):
        compute_sensitivity(loaded, 99, TEXTS, progress=False)
    with pytest.raises(ValueError, match="token_budget must be positive"):
        compute_sensitivity(loaded, 1, TEXTS, token_budget=0, progress=False)
    with pytest.raises(ValueError, match="no tokens"):
        compute_sensitivity(loaded, 1, [""], progress=False)


def test_the_cache_computes_once_and_recomputes_a_damaged_file(tiny_loaded, tmp_path, caplog):
    loaded = tiny_loaded("llama")
    caplog.set_level(logging.INFO, logger="factsync.editing.tensor_cache")
    first = sensitivity_for(loaded, 1, TEXTS, tmp_path, token_budget=200)
    (path,) = (tmp_path / loaded.fingerprint).glob("sensitivity-layer1-*.safetensors")
    second = sensitivity_for(loaded, 1, TEXTS, tmp_path, token_budget=200)
    assert torch.equal(first, second) and "reusing" in caplog.text
    path.write_bytes(b"not a safetensors file")
    caplog.clear()
    third = sensitivity_for(loaded, 1, TEXTS, tmp_path, token_budget=200)
    assert "unreadable" in caplog.text and torch.equal(first, third)


def test_a_shipped_sensitivity_is_copied_into_the_cache_instead_of_computed(
    tiny_loaded, tmp_path, monkeypatch, caplog
):
    loaded = tiny_loaded("llama")
    made = sensitivity_for(loaded, 1, TEXTS, tmp_path / "made", token_budget=200)
    monkeypatch.setattr(sensitivity, "SHIPPED_SENSITIVITIES", tmp_path / "made")
    caplog.set_level(logging.INFO, logger="factsync.editing.tensor_cache")
    copied = sensitivity_for(loaded, 1, TEXTS, tmp_path / "cache", token_budget=200)
    assert torch.equal(made, copied)
    assert "shipped with factsync" in caplog.text and "computing" not in caplog.text
    assert list((tmp_path / "cache" / loaded.fingerprint).glob("sensitivity-layer1-*"))
    caplog.clear()
    sensitivity_for(loaded, 1, TEXTS, tmp_path / "other", token_budget=100)
    assert "computing" in caplog.text  # nothing ships for that budget


def test_the_shipped_sensitivity_is_the_default_models_over_its_shipped_corpus():
    (path,) = SHIPPED_SENSITIVITIES.glob("*/*.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        value = handle.get_tensor("sensitivity")
    window = spec_for("llama").measured_windows[0]  # SmolLM2-135M's
    assert value.shape == (window.hidden_size, window.hidden_size)
    assert torch.isfinite(value).all() and torch.equal(value, value.T)
    default = StatisticsSettings()
    budget = default.tokens_for(1536)  # SmolLM2-135M's keys
    corpora = [json.loads(corpus_file.read_text())
               for corpus_file in SHIPPED_CORPORA.glob(f"{path.parent.name}-*.json")]
    (digest,) = {stored["digest"] for stored in corpora
                 if (stored["num_tokens"], stored["top_k"]) == (budget, default.corpus_top_k)}
    assert path.name == (f"sensitivity-layer{window.layers[-1]}-{digest}-{SENSITIVITY_TOKENS}"
                         "-len256.safetensors")
    assert metadata == {"format": SENSITIVITY_FORMAT, "fingerprint": path.parent.name,
                        "layer": str(window.layers[-1]), "corpus_digest": digest,
                        "token_budget": str(SENSITIVITY_TOKENS), "max_length": "256"}
