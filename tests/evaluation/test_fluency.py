"""Perplexity on a tiny model: the definition checked against a direct sum, per-text
losses, and the ratio of two perplexities."""

from __future__ import annotations

import math

import pytest
import torch

from factsync.evaluation.fluency import (
    perplexity,
    perplexity_ratio,
    text_nll,
    text_nlls,
    token_nlls,
)
from factsync.evaluation.intervals import Interval

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


def test_per_text_nlls_add_up_to_the_whole_and_do_not_depend_on_the_batch(tiny_loaded):
    loaded = tiny_loaded()
    per_text = text_nlls(loaded, TEXTS, batch_size=2)
    assert [tokens for _, tokens in per_text] == [
        len(loaded.tokenizer(t)["input_ids"]) for t in TEXTS]  # the prefix is not text
    whole = text_nll(loaded, TEXTS, batch_size=2)
    assert sum(nll for nll, _ in per_text) == pytest.approx(whole[0], rel=1e-6)
    for (nll, _), (alone, _) in zip(per_text, text_nlls(loaded, TEXTS, batch_size=1),
                                    strict=True):
        assert nll == pytest.approx(alone, rel=1e-5)


def test_the_perplexity_ratio_is_that_of_the_two_perplexities(tiny_loaded, random_delta):
    loaded = tiny_loaded()
    texts = TEXTS * 3
    base, base_perplexity = text_nlls(loaded, texts), perplexity(loaded, texts)
    assert perplexity_ratio(base, base) == Interval(1.0, 1.0, 1.0)
    handle = random_delta(loaded, [1]).apply(loaded)
    ratio = perplexity_ratio(text_nlls(loaded, texts), base)
    assert ratio.mean == pytest.approx(perplexity(loaded, texts) / base_perplexity, rel=1e-5)
    assert ratio.mean != pytest.approx(1.0)
    assert ratio.low <= ratio.mean <= ratio.high
    handle.revert()


def test_a_perplexity_ratio_needs_the_same_texts(tiny_loaded):
    loaded = tiny_loaded()
    with pytest.raises(ValueError, match="different texts"):
        perplexity_ratio(text_nlls(loaded, TEXTS), text_nlls(loaded, TEXTS[:1]))


def test_token_nlls_are_the_tokens_perplexity_scores_one_by_one(tiny_loaded):
    loaded = tiny_loaded()
    scored = token_nlls(loaded, TEXTS, batch_size=2)  # the shorter text is padded
    for text, mine, (summed, count) in zip(TEXTS, scored, text_nlls(loaded, TEXTS),
                                           strict=True):
        ids = torch.tensor([loaded.prefix_ids + loaded.tokenizer(text)["input_ids"]])
        assert mine.ids == ids[0].tolist()
        with torch.no_grad():
            log_probs = torch.log_softmax(loaded.model(input_ids=ids).logits[0, :-1], -1)
        direct = -log_probs.gather(1, ids[0, 1:, None]).squeeze(1)[mine.first - 1:]
        torch.testing.assert_close(mine.nlls, direct, atol=1e-4, rtol=1e-4)
        assert len(mine.nlls) == count and float(mine.nlls.sum()) == pytest.approx(summed)
