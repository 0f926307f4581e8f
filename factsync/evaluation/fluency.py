"""Fluency: perplexity of a model on held-out text, and its ratio to a reference."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from factsync.evaluation.intervals import Interval, ratio_of_sums_interval
from factsync.models.loading import LoadedModel
from factsync.models.scoring import scoring_batches


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
    per_text = text_nlls(loaded, texts, batch_size=batch_size, max_length=max_length)
    return sum(nll for nll, _ in per_text), sum(tokens for _, tokens in per_text)


@dataclass(frozen=True)
class ScoredText:
    """One text's tokens as ``perplexity`` scores them.

    Attributes:
        ids: the token ids of the whole encoded text, prompt prefix included; the
            scored ones are ``ids[first:]``.
        nlls: (scored tokens,) each scored token's NLL (nats) given the tokens before it.
        first: index in ``ids`` of the first scored token.
    """

    ids: list[int]
    nlls: torch.Tensor
    first: int


def token_nlls(
    loaded: LoadedModel, texts: list[str], *, batch_size: int = 8, max_length: int = 256
) -> list[ScoredText]:
    """Per text, the NLL of every token ``perplexity`` scores."""
    tokenizer = loaded.tokenizer
    prefix = list(loaded.prefix_ids)
    first = max(len(prefix), 1)  # the prefix is not text; the very first token has no context
    scored_texts: list[ScoredText] = []
    for start in scoring_batches(range(0, len(texts), batch_size)):
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
        token_nll = -log_probs.gather(2, input_ids[:, 1:, None]).squeeze(2).cpu()
        for row, ids in enumerate(encoded):
            # token_nll[:, j] scores token j + 1
            scored_texts.append(ScoredText(ids, token_nll[row, first - 1 : len(ids) - 1], first))
    return scored_texts


def text_nlls(
    loaded: LoadedModel, texts: list[str], *, batch_size: int = 8, max_length: int = 256
) -> list[tuple[float, int]]:
    """Per text, the summed NLL (nats) of its tokens and how many were scored, as
    ``perplexity`` counts them."""
    return summed_nlls(token_nlls(loaded, texts, batch_size=batch_size, max_length=max_length))


def summed_nlls(scored: Sequence[ScoredText]) -> list[tuple[float, int]]:
    """``token_nlls`` summed per text, as ``text_nlls`` gives them."""
    return [(float(text.nlls.sum()), len(text.nlls)) for text in scored]


def first_and_later_change(unedited: Sequence[ScoredText],
                           edited: Sequence[ScoredText]) -> tuple[float, float]:
    """How the NLL of the same texts changed from ``unedited`` to ``edited`` (both from
    ``token_nlls``), summed over the texts (nats): at each text's first scored token, and
    at every later one. A text's first token is predicted from the tokens that lead every
    text alone, so its change tells the harm done there from the harm done elsewhere."""
    pairs = list(zip(unedited, edited, strict=True))
    first = sum(float(after.nlls[:1].sum() - before.nlls[:1].sum()) for before, after in pairs)
    later = sum(float(after.nlls[1:].sum() - before.nlls[1:].sum()) for before, after in pairs)
    return first, later


def perplexity_ratio(
    edited: Sequence[tuple[float, int]], base: Sequence[tuple[float, int]], *, seed: int = 0
) -> Interval:
    """The edited model's perplexity over the base model's on the same texts, from each
    model's ``text_nlls``, with its 95% bootstrap interval over the texts.

    A resample draws each text for both models at once, so the interval says how much
    the ratio depends on which texts were measured, not how the two models differ on
    average. Raises ``ValueError`` when the two did not count the same tokens text by
    text (so they cannot have measured the same texts).
    """
    if [tokens for _, tokens in edited] != [tokens for _, tokens in base]:
        raise ValueError("the two perplexities were measured on different texts")
    return perplexity_change([e - b for (e, _), (b, _) in zip(edited, base, strict=True)],
                             [tokens for _, tokens in base], seed=seed)


def perplexity_change(nll_changes: Sequence[float], tokens: Sequence[int], *,
                      seed: int = 0) -> Interval:
    """``exp(sum(nll_changes) / sum(tokens))``, the factor by which per-text changes of
    summed NLL change the perplexity, with its 95% bootstrap interval over the texts."""
    log_ratio = ratio_of_sums_interval(nll_changes, tokens, seed=seed)
    return Interval(*(math.exp(v) for v in (log_ratio.mean, log_ratio.low, log_ratio.high)))
