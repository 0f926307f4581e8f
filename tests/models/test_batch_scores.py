"""``batch_scores``: what one forward pass says about a batch's target tokens."""

from __future__ import annotations

import torch

from factsync.models.scoring import batch_scores, score_targets
from factsync.models.text import PromptSpec, encode, object_ids


def test_the_margin_is_the_smallest_lead_of_a_target_token_over_any_other(tiny_loaded):
    loaded = tiny_loaded()
    specs = [PromptSpec("The capital of {} is", "France", object_ids(loaded, "Paris Berlin")),
             PromptSpec("{} is owned by", "Skype", object_ids(loaded, "Apple")),
             PromptSpec("{} plays the", "Toko Yasuda", ())]
    batch = encode(loaded, specs)
    with torch.no_grad():
        scores = batch_scores(loaded, batch)
        logits = loaded.model(input_ids=batch.input_ids,
                              attention_mask=batch.attention_mask).logits
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    rows, logit_positions, token_positions = batch.target_positions()
    expected = torch.full((len(specs),), float("inf"))
    for row, at, token_at in zip(rows.tolist(), logit_positions.tolist(),
                                 token_positions.tolist(), strict=True):
        target = batch.input_ids[row, token_at]
        others = torch.cat([log_probs[row, at, :target], log_probs[row, at, target + 1:]])
        lead = log_probs[row, at, target] - others.max()
        expected[row] = torch.minimum(expected[row], lead)
    torch.testing.assert_close(scores.margin, expected, atol=1e-4, rtol=1e-4)
    assert torch.equal(scores.exact[:2], scores.margin[:2] > 0)
    assert scores.margin[2] == float("inf")  # no targets


def test_rows_scored_in_batches_of_like_length_come_back_in_their_order(tiny_loaded):
    loaded = tiny_loaded()
    specs = [PromptSpec("In a long sentence that goes on and on, the capital of {} is", "France",
                        object_ids(loaded, "Paris")),
             PromptSpec("{} is owned by", "Skype", object_ids(loaded, "Apple Inc")),
             PromptSpec("Everyone who has ever been asked knows that {} plays the", "Toko Yasuda",
                        object_ids(loaded, "guitar")),
             PromptSpec("{} is in", "Rome", object_ids(loaded, "Italy"))]
    together = score_targets(loaded, specs, batch_size=2)
    for spec, score in zip(specs, together, strict=True):
        (alone,) = score_targets(loaded, [spec])
        assert score.predicted == alone.predicted and score.exact == alone.exact
        assert abs(score.mean_nll - alone.mean_nll) < 1e-4


def test_equal_rows_get_equal_scores_whatever_batch_they_fall_in(tiny_loaded):
    loaded = tiny_loaded()
    row = PromptSpec("{} is in", "Rome", object_ids(loaded, "Italy"))
    longer = [PromptSpec("In a story told again and again, {} was born in", f"Person {n}",
                         object_ids(loaded, "Paris")) for n in range(5)]
    scores = score_targets(loaded, [row, *longer, row], batch_size=2)
    assert scores[0] == scores[-1]
