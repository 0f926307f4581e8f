"""Keys and outputs at subjects' last tokens: what the spread reads from the model."""

from __future__ import annotations

import torch

from factsync.editing.keys import subject_states
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
