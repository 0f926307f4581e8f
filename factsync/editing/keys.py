"""Keys and current values at a subject's last token, read from the model as it is."""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass

import torch

from factsync.editing.covariance import lead_ids
from factsync.models.hooks import capture_hidden, capture_keys, forward_through, replay_below
from factsync.models.loading import LoadedModel
from factsync.models.text import PromptBatch, PromptSpec, encode


@dataclass(frozen=True)
class SubjectStates:
    """What the spread reads at the subjects' last tokens for one edit layer.

    Attributes:
        keys: (key_size, groups) keys of the layer's MLP output projection, float32.
        owners: (groups,) the fact index of each key group.
        outputs: (facts, hidden) output of the output layer on the bare prompts.
    """

    keys: torch.Tensor
    owners: torch.Tensor
    outputs: torch.Tensor


@dataclass(frozen=True)
class FrozenStates:
    """The output of decoder ``layer`` on every batch ``subject_states`` runs.

    While layers ``0..layer`` stay as they are (the spread changes only the layers above
    them), ``subject_states`` replays these instead of running those layers again.
    """

    layer: int
    batches: list[torch.Tensor]


def frozen_states(
    loaded: LoadedModel,
    prompts: list[tuple[str, str]],
    layer: int,
    contexts: list[str],
    *,
    batch_size: int = 64,
) -> FrozenStates:
    """The output of decoder ``layer`` for ``subject_states`` on the same arguments."""
    batches = []
    for batch, through in _subject_batches(loaded, prompts, contexts, batch_size):
        with capture_hidden(loaded, [layer]) as captured, torch.no_grad():
            forward_through(loaded, layer, input_ids=batch.input_ids[:, :through],
                            attention_mask=batch.attention_mask[:, :through])
        batches.append(captured[layer])
    return FrozenStates(layer=layer, batches=batches)


def lead_keys(loaded: LoadedModel, layers: list[int]) -> dict[int, torch.Tensor]:
    """Keys (key_size, lead tokens) of each of ``layers`` at the tokens that lead every
    text (``covariance.lead_ids``: the prompt prefix or the tokenizer's start tokens),
    read from the model as it is; empty when nothing leads a text.

    Those positions see only each other, so their keys and outputs are the same in
    every text, and later tokens attend to them throughout. The key statistics leave
    them out, so C does not protect them.
    """
    lead = lead_ids(loaded)
    if not lead:
        return {}
    ids = torch.tensor([lead], device=loaded.device)
    with capture_keys(loaded, layers) as captured, torch.no_grad():
        forward_through(loaded, max(layers), input_ids=ids,
                        attention_mask=torch.ones_like(ids))
    return {layer: captured[layer][0].float().T.contiguous() for layer in layers}


def subject_states(
    loaded: LoadedModel,
    prompts: list[tuple[str, str]],
    key_layer: int,
    output_layer: int,
    contexts: list[str],
    *,
    batch_size: int = 64,
    frozen: FrozenStates | None = None,
) -> SubjectStates:
    """Keys at ``key_layer`` and hidden outputs of ``output_layer``, in one pass.

    ``prompts`` holds (template, subject) pairs; ``contexts`` must start with the bare
    context ``""``. Keys are averaged over the context prefixes, as MEMIT does, but the
    bare prompt (the subject at the start of the text, as users ask) keeps a key of its
    own, and prefixed prompts are averaged separately for each way the subject
    tokenises. A subject at the start of a text ("LinkedIn" -> Link|ed|In) and after a
    prefix (" LinkedIn", one token) can give nearly orthogonal keys, and an update
    fitted to their average moves neither. Outputs are read on the bare prompts. The
    pass stops at the higher of the two layers and at the last subject token, and starts
    above ``frozen.layer`` when ``frozen`` (``frozen_states`` of the same arguments) is
    given.
    """
    return subject_states_by_layer(loaded, prompts, [key_layer], output_layer, contexts,
                                   batch_size=batch_size, frozen=frozen)[key_layer]


def subject_states_by_layer(
    loaded: LoadedModel,
    prompts: list[tuple[str, str]],
    key_layers: list[int],
    output_layer: int,
    contexts: list[str],
    *,
    batch_size: int = 64,
    frozen: FrozenStates | None = None,
) -> dict[int, SubjectStates]:
    """``subject_states`` at every one of ``key_layers``, all read in the same pass (the
    model must not change between the layers' reads, as it does in MEMIT's layer by
    layer spread); every answer carries the same owners and outputs."""
    if frozen is not None and min(*key_layers, output_layer) <= frozen.layer:
        raise ValueError(f"layers {key_layers} and {output_layer} must be above the frozen "
                         f"layer {frozen.layer}")
    keys: dict[int, list[torch.Tensor]] = {layer: [] for layer in key_layers}
    outputs, tokens = [], []
    batches = _subject_batches(loaded, prompts, contexts, batch_size)
    for index, (batch, through) in enumerate(batches):
        with ExitStack() as stack:
            if frozen is not None:
                replay = stack.enter_context(replay_below(loaded, frozen.layer))
                replay.replay = frozen.batches[index]
            captured_keys = stack.enter_context(capture_keys(loaded, key_layers))
            captured_hidden = stack.enter_context(capture_hidden(loaded, [output_layer]))
            stack.enter_context(torch.no_grad())
            forward_through(
                loaded,
                max(*key_layers, output_layer),
                input_ids=batch.input_ids[:, :through],
                attention_mask=batch.attention_mask[:, :through],
            )
        for layer in key_layers:
            keys[layer].append(_at_subject(captured_keys[layer], batch))
        outputs.append(_at_subject(captured_hidden[output_layer], batch))
        tokens.extend(batch.subject_tokens(row) for row in range(len(batch.input_ids)))
    groups: dict[tuple[int, bool, tuple[int, ...]], list[int]] = {}
    for row, subject_tokens in enumerate(tokens):
        fact, context = divmod(row, len(contexts))
        groups.setdefault((fact, contexts[context] == "", subject_tokens), []).append(row)
    owners = torch.tensor([fact for fact, _, _ in groups], device=outputs[0].device)
    bare = torch.cat(outputs)[:: len(contexts)]  # the bare context is each fact's first row
    states = {}
    for layer in key_layers:
        flat = torch.cat(keys[layer])  # (facts * contexts, key)
        averaged = torch.stack([flat[members].mean(dim=0) for members in groups.values()])
        states[layer] = SubjectStates(keys=averaged.T.contiguous(), owners=owners, outputs=bare)
    return states


def _subject_batches(
    loaded: LoadedModel, prompts: list[tuple[str, str]], contexts: list[str], batch_size: int
) -> list[tuple[PromptBatch, int]]:
    """Every prompt under every context, encoded in batches, each with the number of
    columns a pass must run: through the last subject token of its rows. Attention is
    causal, so the tokens after a row's subject change nothing read there."""
    if not contexts or contexts[0] != "":
        raise ValueError("contexts must start with the bare context ''")
    rows = [PromptSpec(t, s, context=c) for t, s in prompts for c in contexts]
    batches = []
    for start in range(0, len(rows), batch_size):
        batch = encode(loaded, rows[start : start + batch_size])
        batches.append((batch, int(batch.subject_last.max()) + 1))
    return batches


def subject_outputs(
    loaded: LoadedModel, prompts: list[tuple[str, str]], layer: int
) -> torch.Tensor:
    """Output hidden state of decoder ``layer`` at each subject's last token.

    Read on the bare prompt (no context prefix). Returns (len(prompts), hidden), float32.
    """
    return subject_states(loaded, prompts, layer, layer, [""]).outputs


def _at_subject(states: torch.Tensor, batch: PromptBatch) -> torch.Tensor:
    """(batch, size) rows of ``states`` (batch, tokens, size) at each last subject token."""
    index = torch.arange(states.shape[0], device=states.device)
    return states[index, batch.subject_last].float()
