"""Re-laid batches and cached prefixes score exactly what the plain batch scores."""

from __future__ import annotations

import torch

from factsync.models.prefix import align_at_subject, full_forward, prefix_states, suffix_forward
from factsync.models.scoring import batch_scores
from factsync.models.text import PromptSpec, encode, object_ids

PROMPTS = [
    ("{} is owned by", "LinkedIn", "Microsoft", ""),
    ("The mother tongue of {} is", "Danielle Darrieux", "French", "Once upon a time. "),
    ("{} is a", "Paris", "", ""),
    ("{}, by", "Apple A5", "Apple", "You know what I said. "),
]


def _rows(loaded) -> list[PromptSpec]:  # noqa: ANN001
    return [
        PromptSpec(t, s, object_ids(loaded, obj) if obj else (), context)
        for t, s, obj, context in PROMPTS
    ]


def test_relaid_rows_end_their_subject_at_one_column_and_drop_label_only_columns(
    tiny_loaded,
):
    loaded = tiny_loaded()
    batch = encode(loaded, _rows(loaded))
    aligned = align_at_subject(batch)
    assert torch.all(aligned.full.subject_last == aligned.split)
    width = aligned.full.input_ids.shape[1]
    assert aligned.labels.shape[1] == width + 1  # the longest row's last target token
    for row in range(len(PROMPTS)):
        real = batch.input_ids[row, batch.attention_mask[row].bool()]
        shift = aligned.split - int(batch.subject_last[row])
        assert torch.equal(aligned.labels[row, shift : shift + len(real)], real)
        assert int(aligned.full.attention_mask[row, :shift].sum()) == 0


def test_relaid_and_suffix_scores_equal_the_plain_batch(tiny_loaded, tiny_family):
    loaded = tiny_loaded(tiny_family)
    batch = encode(loaded, _rows(loaded))
    watched = torch.tensor([False, True, True, False])
    with torch.no_grad():
        plain = batch_scores(loaded, batch, watched)
        aligned = align_at_subject(batch)
        arguments, cache = full_forward(aligned)
        whole = batch_scores(loaded, aligned.full, watched, labels=aligned.labels, **arguments)
        prefix = prefix_states(cache, aligned.split)
        rows = torch.tensor([1, 2, 3])
        suffix = batch_scores(
            loaded,
            aligned.suffix().select(rows),
            watched[rows],
            labels=aligned.labels[rows, aligned.split :],
            **suffix_forward(aligned, prefix, rows),
        )
    assert torch.allclose(whole.nll, plain.nll, atol=1e-5)
    assert torch.allclose(whole.next_token, plain.next_token, atol=1e-5)
    assert torch.allclose(suffix.nll, plain.nll[rows], atol=1e-5)
    assert torch.allclose(suffix.next_token, plain.next_token, atol=1e-5)
