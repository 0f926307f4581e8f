"""Perplexity on a tiny model: the definition checked against a direct sum."""

from __future__ import annotations

import math

import pytest
import torch

from factsync.evaluation.fluency import perplexity

TEXTS = ["The capital of France is Paris.", "Here is how to write a letter: Dear customer."]


def test_perplexity_is_the_exponent_of_the_mean_token_nll(tiny_loaded):
    loaded = tiny_loaded()
    nll, count = 0.0, 0
    for text in TEXTS:
        ids = torch.tensor([loaded.prefix_ids + loaded.tokenizer(text)["input_ids"]])
        with torch.no_grad():
            log_probs = torch.log_softmax(loaded.model(input_ids=ids).logits[0, :-1], -1)
        nll -= float(log_probs.gather(1, ids[0, 1:, None]).sum())
        count += ids.shape[1] - 1
    assert perplexity(loaded, TEXTS, batch_size=2) == pytest.approx(math.exp(nll / count), rel=1e-5)
    assert perplexity(loaded, TEXTS, batch_size=1) == pytest.approx(
        perplexity(loaded, TEXTS, batch_size=2), rel=1e-5
    )


def test_perplexity_refuses_no_text(tiny_loaded):
    with pytest.raises(ValueError, match="no texts"):
        perplexity(tiny_loaded(), [])
