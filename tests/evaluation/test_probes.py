"""Probe scores and perplexity on tiny models: definitions checked against direct sums."""

from __future__ import annotations

import math

import pytest
import torch

from factsync.editing.requests import EditRequest
from factsync.evaluation.fluency import perplexity
from factsync.evaluation.probes import Probe, neighbourhood_reference, score_probes
from factsync.models.scoring import score_targets
from factsync.models.text import PromptSpec, object_ids

PROBES = [
    Probe(
        EditRequest("Paris", "The capital of {} is", "Rome", "France"),
        paraphrases=("Paris is the capital city of", "Once upon a time, Paris was in"),
        neighbourhood=("The capital of Lyon is", "Skype is owned by"),
    ),
    Probe(
        EditRequest("LinkedIn", "{} is owned by", "Apple", "Microsoft"),
        neighbourhood=("Skype is owned by",),
    ),
]
TEXTS = ["The capital of France is Paris.", "Here is how to write a letter: Dear customer."]


def _prefers(loaded, prompt: str, winner: str, loser: str) -> bool:
    win, lose = score_targets(
        loaded, [PromptSpec("{}", prompt, object_ids(loaded, o)) for o in (winner, loser)]
    )
    return win.mean_nll < lose.mean_nll


def test_scores_follow_the_definitions(tiny_loaded):
    loaded = tiny_loaded()
    scores = score_probes(loaded, PROBES, neighbourhood_reference(loaded, PROBES))
    efficacy = [
        _prefers(
            loaded,
            p.request.prompt,
            "Rome" if i == 0 else "Apple",
            "France" if i == 0 else "Microsoft",
        )
        for i, p in enumerate(PROBES)
    ]
    assert scores.efficacy_success == pytest.approx(sum(efficacy) / 2)
    paraphrase = [_prefers(loaded, p, "Rome", "France") for p in PROBES[0].paraphrases]
    assert scores.paraphrase_success == pytest.approx(sum(paraphrase) / 2)  # one probe only
    first = [_prefers(loaded, p, "France", "Rome") for p in PROBES[0].neighbourhood]
    second = _prefers(loaded, "Skype is owned by", "Microsoft", "Apple")
    assert scores.neighbourhood_success == pytest.approx((sum(first) / 2 + second) / 2)
    # The unedited model predicts what it predicted: accuracy against itself is 1.
    assert scores.neighbourhood_accuracy == 1.0


def test_neighbourhood_accuracy_needs_a_reference(tiny_loaded):
    scores = score_probes(tiny_loaded(), PROBES)
    assert scores.neighbourhood_accuracy is None
    assert scores.neighbourhood_success is not None


def test_probe_needs_the_old_object():
    with pytest.raises(ValueError, match="needs the old object"):
        Probe(EditRequest("Paris", "{} is in", "Rome"))


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
