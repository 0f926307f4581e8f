"""Prompt encoding: subject positions, targets from ids, padding."""

from __future__ import annotations

import pytest

from factsync.models.text import PromptSpec, encode, object_ids


def _decode(loaded, ids) -> str:
    return loaded.tokenizer.decode(ids)


@pytest.mark.parametrize("context", ["", "Once upon a time. "])
def test_subject_positions_cover_the_subject(tiny_loaded, context):
    loaded = tiny_loaded()
    row = PromptSpec("The capital of {} is", "Danielle Darrieux", (), context)
    batch = encode(loaded, [row])
    subject = _decode(loaded, list(batch.subject_tokens(0)))
    assert subject.strip() == "Danielle Darrieux"
    assert batch.input_ids[0, 0].item() == loaded.prefix_ids[0]


def test_targets_are_appended_as_ids_and_rows_right_padded(tiny_loaded):
    loaded = tiny_loaded()
    paris = object_ids(loaded, "Paris")
    rows = [
        PromptSpec("{} is in", "Lyon", paris),
        PromptSpec("The capital of {} is", "France", paris),
    ]
    batch = encode(loaded, rows)
    for index in range(2):
        last = int(batch.prompt_last[index])
        appended = batch.input_ids[index, last + 1 : last + 1 + len(paris)].tolist()
        assert tuple(appended) == paris
    assert batch.attention_mask[0].sum() < batch.attention_mask[1].sum()
    assert batch.attention_mask[0, -1] == 0


def test_object_ids_carry_the_leading_space(tiny_loaded):
    loaded = tiny_loaded()
    assert object_ids(loaded, "Paris") == object_ids(loaded, " Paris")
    assert _decode(loaded, object_ids(loaded, "Paris")) == " Paris"


def test_template_without_slot_is_refused(tiny_loaded):
    with pytest.raises(ValueError, match="has no '{}'"):
        encode(tiny_loaded(), [PromptSpec("no slot here", "x")])
