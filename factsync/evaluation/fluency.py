"""Fluency: perplexity of a model on held-out text, and its ratio to a reference."""

from __future__ import annotations

import math

import torch

from factsync.models.loading import LoadedModel


def perplexity(
    loaded: LoadedModel, texts: list[str], *, batch_size: int = 8, max_length: int = 256
) -> float:
    """Token-weighted perplexity of the model on ``texts``.

    Each text is truncated to ``max_length`` tokens and preceded by the model's prompt
    prefix, which is not scored.
    """
    if not texts:
        raise ValueError("no texts to measure perplexity on")
    total_nll, total_tokens = text_nll(loaded, texts, batch_size=batch_size,
                                       max_length=max_length)
    if total_tokens == 0:
        raise ValueError("texts encode to no scorable tokens")
    return math.exp(total_nll / total_tokens)


def text_nll(
    loaded: LoadedModel, texts: list[str], *, batch_size: int = 8, max_length: int = 256
) -> tuple[float, int]:
    """The summed NLL (nats) of ``texts``' tokens and how many tokens were scored, as
    ``perplexity`` counts them: sums over parts of a list add up to the whole list's."""
    tokenizer = loaded.tokenizer
    prefix = list(loaded.prefix_ids)
    total_nll, total_tokens = 0.0, 0
    for start in range(0, len(texts), batch_size):
        encoded = [
            prefix + tokenizer(t, add_special_tokens=True)["input_ids"][:max_length]
            for t in texts[start : start + batch_size]
        ]
        width = max(len(ids) for ids in encoded)
        input_ids = torch.zeros((len(encoded), width), dtype=torch.long)
        mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, ids in enumerate(encoded):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            mask[row, : len(ids)] = 1
        input_ids, mask = input_ids.to(loaded.device), mask.to(loaded.device)
        with torch.no_grad():
            logits = loaded.model(input_ids=input_ids, attention_mask=mask).logits.float()
        log_probs = torch.log_softmax(logits[:, :-1], dim=-1)  # (batch, tokens-1, vocab)
        token_nll = -log_probs.gather(2, input_ids[:, 1:, None]).squeeze(2)
        scored = mask[:, 1:].bool()
        if prefix:
            scored[:, : len(prefix) - 1] = False  # the prefix itself is not text
        total_nll += float(token_nll[scored].sum())
        total_tokens += int(scored.sum())
    return total_nll, total_tokens
