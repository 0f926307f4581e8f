"""Re-laid batches and cached prefixes score exactly what the plain batch scores."""

from __future__ import annotations

import pytest
import torch

from factsync.models.prefix import (
    align_at_subject,
    full_forward,
    prefix_states,
    suffix_forward,
    width_groups,
)
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


def test_a_suffix_cut_to_the_columns_its_rows_read_scores_the_same(tiny_loaded, tiny_family):
    loaded = tiny_loaded(tiny_family)
    batch = encode(loaded, _rows(loaded))
    aligned = align_at_subject(batch)
    suffix = aligned.suffix()
    with torch.no_grad():
        arguments, cache = full_forward(aligned)
        batch_scores(loaded, aligned.full, labels=aligned.labels, **arguments)
        prefix = prefix_states(cache, aligned.split)
        widths = suffix.read_widths()
        rows = torch.nonzero(widths < widths.max()).squeeze(1)  # all but the longest
        width = int(widths[rows].max())
        assert len(rows) >= 2 and width < suffix.input_ids.shape[1]
        labels = aligned.labels[rows, aligned.split :]
        whole = batch_scores(loaded, suffix.select(rows), labels=labels,
                             **suffix_forward(aligned, prefix, rows))
        cut = batch_scores(loaded, suffix.select(rows).first_columns(width), labels=labels,
                           **suffix_forward(aligned, prefix, rows, width))
    assert torch.allclose(cut.nll, whole.nll, atol=1e-5)
    assert torch.equal(cut.exact, whole.exact)


def test_rows_of_one_width_run_as_one_group():
    assert width_groups([4, 4, 4], overhead=10) == [(0, 3)]


def test_free_passes_give_each_width_its_own_group():
    assert width_groups([1, 1, 2, 5, 5], overhead=0) == [(0, 2), (2, 3), (3, 5)]


def test_costly_passes_keep_all_rows_together():
    assert width_groups([1, 2, 3, 30], overhead=1000) == [(0, 4)]


def test_groups_split_where_padding_costs_more_than_a_pass():
    # Together: 6 rows * 9 = 54 + 10. Apart at the jump: 5 * 2 + 10 + 1 * 9 + 10 = 39.
    # Three groups: 3 * 1 + 2 * 2 + 9 + 30 = 46.
    assert width_groups([1, 1, 1, 2, 2, 9], overhead=10) == [(0, 5), (5, 6)]


def test_widths_out_of_order_are_refused():
    with pytest.raises(ValueError, match="ascending"):
        width_groups([3, 1], overhead=1)


def test_no_rows_make_no_groups():
    assert width_groups([], overhead=5) == []
