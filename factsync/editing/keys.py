"""Keys and current values at a subject's last token, read from the model as it is."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from factsync.models.hooks import capture_hidden, capture_keys, forward_through
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


def subject_states(
    loaded: LoadedModel,
    prompts: list[tuple[str, str]],
    key_layer: int,
    output_layer: int,
    contexts: list[str],
    *,
    batch_size: int = 64,
) -> SubjectStates:
    """Keys at ``key_layer`` and hidden outputs of ``output_layer``, in one pass.

    ``prompts`` holds (template, subject) pairs; ``contexts`` must start with the bare
    context ``""``. Keys are averaged over the context prefixes, as MEMIT does, but the
    bare prompt (the subject at the start of the text, as users ask) keeps a key of its
    own, and prefixed prompts are averaged separately for each way the subject
    tokenises. A subject at the start of a text ("LinkedIn" -> Link|ed|In) and after a
    prefix (" LinkedIn", one token) can give nearly orthogonal keys, and an update
    fitted to their average moves neither. Outputs are read on the bare prompts. The
    pass stops at the higher of the two layers and at the last subject token.
    """
    if not contexts or contexts[0] != "":
        raise ValueError("contexts must start with the bare context ''")
    rows = [PromptSpec(t, s, context=c) for t, s in prompts for c in contexts]
    keys, outputs, tokens = [], [], []
    for start in range(0, len(rows), batch_size):
        batch = encode(loaded, rows[start : start + batch_size])
        # Attention is causal: the tokens after every row's subject change nothing read here.
        through = int(batch.subject_last.max()) + 1
        with capture_keys(loaded, [key_layer]) as captured_keys, capture_hidden(
            loaded, [output_layer]
        ) as captured_hidden, torch.no_grad():
            forward_through(
                loaded,
                max(key_layer, output_layer),
                input_ids=batch.input_ids[:, :through],
                attention_mask=batch.attention_mask[:, :through],
            )
        keys.append(_at_subject(captured_keys[key_layer], batch))
        outputs.append(_at_subject(captured_hidden[output_layer], batch))
        tokens.extend(batch.subject_tokens(row) for row in range(len(batch.input_ids)))
    flat = torch.cat(keys)  # (facts * contexts, key)
    groups: dict[tuple[int, bool, tuple[int, ...]], list[int]] = {}
    for row, subject_tokens in enumerate(tokens):
        fact, context = divmod(row, len(contexts))
        groups.setdefault((fact, contexts[context] == "", subject_tokens), []).append(row)
    averaged = torch.stack([flat[members].mean(dim=0) for members in groups.values()])
    owners = torch.tensor([fact for fact, _, _ in groups], device=flat.device)
    bare = torch.cat(outputs)[:: len(contexts)]  # the bare context is each fact's first row
    return SubjectStates(keys=averaged.T.contiguous(), owners=owners, outputs=bare)


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
