"""Keys and current values at a subject's last token, read from the model as it is."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import torch

from factsync.models.hooks import capture_hidden, capture_keys
from factsync.models.loading import LoadedModel
from factsync.models.text import PromptSpec, encode

Capture = Callable[[LoadedModel, list[int]], AbstractContextManager[dict[int, torch.Tensor]]]


def subject_keys(
    loaded: LoadedModel,
    prompts: list[tuple[str, str]],
    layer: int,
    contexts: list[str],
    *,
    batch_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys of ``layer``'s MLP output projection at each subject's last token.

    ``prompts`` holds (template, subject) pairs. Keys are averaged over the context
    prefixes, as MEMIT does, but the bare prompt (the subject at the start of the text,
    as users ask) keeps a key of its own, and prefixed prompts are averaged separately
    for each way the subject tokenises. A subject at the start of a text
    ("LinkedIn" -> Link|ed|In) and after a prefix (" LinkedIn", one token) can give
    nearly orthogonal keys, and an update fitted to their average moves neither.
    Returns keys (key_size, groups) in float32 and the fact index of each group.
    """
    rows = [PromptSpec(t, s, context=c) for t, s in prompts for c in contexts]
    keys, tokens = [], []
    for start in range(0, len(rows), batch_size):
        batch = encode(loaded, rows[start : start + batch_size])
        keys.append(_at_subject(loaded, batch, layer, capture_keys))
        tokens.extend(batch.subject_tokens(row) for row in range(len(batch.input_ids)))
    flat = torch.cat(keys)  # (facts * contexts, key)
    groups: dict[tuple[int, bool, tuple[int, ...]], list[int]] = {}
    for row, subject_tokens in enumerate(tokens):
        fact, context = divmod(row, len(contexts))
        groups.setdefault((fact, contexts[context] == "", subject_tokens), []).append(row)
    averaged = torch.stack([flat[members].mean(dim=0) for members in groups.values()])
    owners = torch.tensor([fact for fact, _, _ in groups], device=flat.device)
    return averaged.T.contiguous(), owners


def subject_outputs(
    loaded: LoadedModel, prompts: list[tuple[str, str]], layer: int, *, batch_size: int = 64
) -> torch.Tensor:
    """Output hidden state of decoder ``layer`` at each subject's last token.

    Read on the bare prompt (no context prefix). Returns (len(prompts), hidden), float32.
    """
    rows = [PromptSpec(t, s) for t, s in prompts]
    return torch.cat(
        [
            _at_subject(loaded, encode(loaded, rows[i : i + batch_size]), layer, capture_hidden)
            for i in range(0, len(rows), batch_size)
        ]
    )


def _at_subject(loaded: LoadedModel, batch, layer: int, capture: Capture) -> torch.Tensor:  # noqa: ANN001
    """(batch, size) states of ``capture`` at ``layer`` on each row's last subject token."""
    with capture(loaded, [layer]) as captured, torch.no_grad():
        loaded.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    states = captured[layer]  # (batch, tokens, size)
    index = torch.arange(states.shape[0], device=states.device)
    return states[index, batch.subject_last].float()
