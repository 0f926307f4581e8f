"""Teacher-forced scoring of target token sequences after prompts, in batches."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from factsync.models.loading import LoadedModel
from factsync.models.text import PromptBatch, PromptSpec, encode


@dataclass(frozen=True)
class TargetScore:
    """How a model scores one target after one prompt.

    Attributes:
        mean_nll: mean negative log-likelihood per target token (nats).
        exact: every target token is the argmax at its position (teacher forced).
        predicted: the argmax token at each target position.
    """

    mean_nll: float
    exact: bool
    predicted: tuple[int, ...]

    @property
    def probability(self) -> float:
        """Geometric-mean per-token probability, ``exp(-mean_nll)``."""
        return math.exp(-self.mean_nll)


def output_logits(
    loaded: LoadedModel,
    batch: PromptBatch,
    rows: torch.Tensor,
    positions: torch.Tensor,
    **forward: Any,
) -> torch.Tensor:
    """Logits at chosen (row, position) pairs only: (pairs, vocab).

    Runs the decoder stack once and projects onto the vocabulary only where a logit is
    read, instead of at every padded position. ``forward`` adds or replaces keyword
    arguments of the decoder stack's forward (a cache, positions, a longer mask).
    """
    arguments = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask} | forward
    hidden = loaded.model.base_model(**arguments).last_hidden_state  # (batch, tokens, hidden)
    return loaded.model.get_output_embeddings()(hidden[rows, positions]).float()


def target_nll(
    loaded: LoadedModel, batch: PromptBatch, **forward: Any
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward ``batch`` and score its targets; differentiable in the NLL.

    ``forward`` is passed on to ``output_logits``.

    Returns (mean target NLL per row (batch,), exact-match flag per row (batch,), argmax
    id per target token in row order (targets,), next-token log-probabilities after each
    row's prompt (batch, vocab)).
    """
    size = batch.input_ids.shape[0]
    device = batch.input_ids.device
    rows, logit_pos, token_pos = batch.target_positions()
    every_row = torch.arange(size, device=device)
    # One projection serves the target tokens and every row's next-token distribution.
    logits = output_logits(
        loaded,
        batch,
        torch.cat([rows, every_row]),
        torch.cat([logit_pos, batch.prompt_last]),
        **forward,
    )
    log_probs = torch.log_softmax(logits, dim=-1)  # (targets + batch, vocab)
    target_log_probs, next_token = log_probs[: len(rows)], log_probs[len(rows) :]
    targets = batch.input_ids[rows, token_pos]
    token_nll = -target_log_probs.gather(1, targets[:, None]).squeeze(1)
    argmax = target_log_probs.argmax(dim=-1)
    nll_sum = torch.zeros(size, device=device).index_add(0, rows, token_nll)
    wrong = torch.zeros(size, device=device).index_add(0, rows, (argmax != targets).float())
    lengths = batch.target_lengths.clamp(min=1).to(nll_sum)
    return nll_sum / lengths, wrong == 0, argmax, next_token


def score_targets(
    loaded: LoadedModel, rows: list[PromptSpec], *, batch_size: int = 32
) -> list[TargetScore]:
    """Score each row's ``target_ids`` after its prompt (no gradients)."""
    scores: list[TargetScore] = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        batch = encode(loaded, chunk)
        with torch.no_grad():
            nll, exact, argmax, _ = target_nll(loaded, batch)
        predicted = argmax.tolist()
        cursor = 0
        for index, row in enumerate(chunk):
            length = len(row.target_ids)
            scores.append(
                TargetScore(
                    mean_nll=float(nll[index]),
                    exact=bool(exact[index]),
                    predicted=tuple(predicted[cursor : cursor + length]),
                )
            )
            cursor += length
    return scores
