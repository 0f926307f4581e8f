"""Keys and outputs at subjects' last tokens: what the spread reads from the model."""

from __future__ import annotations

import pytest
import torch

from factsync.editing.delta import restored_weights
from factsync.editing.keys import (
    frozen_states,
    lead_keys,
    subject_states,
    subject_states_by_layer,
)
from factsync.models.hooks import capture_hidden, capture_keys
from factsync.models.text import PromptSpec, encode

PROMPTS = [("{} is owned by the company that was founded in", "LinkedIn"),
           ("The mother tongue of {} is", "Danielle Darrieux")]
CONTEXTS = ["", "Once upon a time. "]


def test_states_read_up_to_the_subjects_equal_those_of_the_whole_prompts(tiny_loaded):
    loaded = tiny_loaded()
    key_layer, output_layer = 1, 2
    states = subject_states(loaded, PROMPTS, key_layer, output_layer, CONTEXTS)
    rows = [PromptSpec(t, s, context=c) for t, s in PROMPTS for c in CONTEXTS]
    batch = encode(loaded, rows)
    with capture_keys(loaded, [key_layer]) as keys, capture_hidden(
            loaded, [output_layer]) as hidden, torch.no_grad():
        loaded.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    at_subject = torch.arange(len(rows)), batch.subject_last
    whole_keys = keys[key_layer][at_subject].float()
    whole_outputs = hidden[output_layer][at_subject].float()
    # Every row's subject ends before the prompts do: the pass was cut short.
    assert int(batch.subject_last.max()) + 1 < batch.input_ids.shape[1]
    torch.testing.assert_close(states.outputs, whole_outputs[:: len(CONTEXTS)])
    # One context besides the bare one: every row's key is a group of its own.
    assert states.owners.tolist() == [0, 0, 1, 1]
    torch.testing.assert_close(states.keys.T, whole_keys)


def test_every_layer_read_in_one_pass_equals_that_layer_read_alone(tiny_loaded):
    loaded = tiny_loaded()
    layers = [0, 1, 2]
    together = subject_states_by_layer(loaded, PROMPTS, layers, 2, CONTEXTS, batch_size=3)
    assert sorted(together) == layers
    for layer in layers:
        alone = subject_states(loaded, PROMPTS, layer, 2, CONTEXTS, batch_size=3)
        assert torch.equal(together[layer].keys, alone.keys)
        assert torch.equal(together[layer].owners, alone.owners)
        assert torch.equal(together[layer].outputs, alone.outputs)
    assert not torch.allclose(together[0].keys, together[1].keys)


def test_states_replayed_below_an_edited_layer_equal_those_run_through_it(tiny_loaded):
    loaded = tiny_loaded()
    frozen = frozen_states(loaded, PROMPTS, 0, CONTEXTS, batch_size=3)
    assert len(frozen.batches) == 2  # four rows in batches of three: both are replayed
    path = loaded.spec.mlp_out_path(1)
    with restored_weights(loaded, [path]):
        weight = loaded.model.get_parameter(f"{path}.weight")
        with torch.no_grad():
            weight.mul_(1.5)  # an edit above the frozen layer, as the spread makes
        replayed = subject_states(loaded, PROMPTS, 1, 2, CONTEXTS, batch_size=3, frozen=frozen)
        run = subject_states(loaded, PROMPTS, 1, 2, CONTEXTS, batch_size=3)
    assert torch.equal(replayed.keys, run.keys)
    assert torch.equal(replayed.outputs, run.outputs)


def test_states_cannot_be_replayed_at_or_above_the_layers_they_read(tiny_loaded):
    loaded = tiny_loaded()
    frozen = frozen_states(loaded, PROMPTS, 1, CONTEXTS)
    with pytest.raises(ValueError, match="above the frozen layer 1"):
        subject_states(loaded, PROMPTS, 1, 2, CONTEXTS, frozen=frozen)


def test_replayed_states_are_read_once_so_later_changes_below_them_are_not_seen(tiny_loaded):
    loaded = tiny_loaded()
    before = subject_states(loaded, PROMPTS, 1, 2, CONTEXTS)
    frozen = frozen_states(loaded, PROMPTS, 0, CONTEXTS)
    path = loaded.spec.mlp_out_path(0)
    with restored_weights(loaded, [path]):
        with torch.no_grad():
            loaded.model.get_parameter(f"{path}.weight").mul_(1.5)
        replayed = subject_states(loaded, PROMPTS, 1, 2, CONTEXTS, frozen=frozen)
        run = subject_states(loaded, PROMPTS, 1, 2, CONTEXTS)
    assert torch.equal(replayed.outputs, before.outputs)
    assert not torch.allclose(run.outputs, before.outputs)


def test_lead_keys_are_those_at_the_start_of_every_text(tiny_loaded, tiny_family):
    loaded = tiny_loaded(tiny_family)
    layers = [1, 2]
    lead = loaded.prefix_ids
    assert lead  # the tiny tokenizers add no start token: a prefix leads every text
    keys = lead_keys(loaded, layers)
    for text in ("The capital of France is Paris.", "LinkedIn is owned by Microsoft"):
        ids = torch.tensor([lead + loaded.tokenizer(text, add_special_tokens=False)["input_ids"]])
        with capture_keys(loaded, layers) as captured, torch.no_grad():
            loaded.model(input_ids=ids)
        for layer in layers:
            assert keys[layer].shape == (captured[layer].shape[-1], len(lead))
            torch.testing.assert_close(keys[layer], captured[layer][0, : len(lead)].T)
