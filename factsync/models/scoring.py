"""Teacher-forced scoring of target token sequences after prompts, in batches."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, fields
from typing import Any

import torch
from tqdm import tqdm

from factsync.models.loading import LoadedModel
from factsync.models.text import PromptBatch, PromptSpec, encode, object_ids


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


@dataclass
class BatchScores:
    """What one forward pass says about a batch's targets; differentiable.

    Attributes:
        nll: (batch,) mean NLL per target token of each row; 0 for rows without targets.
        exact: (batch,) every target token of the row is the argmax at its position.
        margin: (batch,) the row's smallest lead of a target token's log-probability
            over the best other token's at its position (negative where another token
            wins); ``inf`` for rows without targets.
        predicted: (targets,) the argmax id at each target token, in row order.
        next_token: (watched, vocab) next-token log-probabilities after the prompt of
            each watched row.
    """

    nll: torch.Tensor
    exact: torch.Tensor
    margin: torch.Tensor
    predicted: torch.Tensor
    next_token: torch.Tensor

    @classmethod
    def concatenated(cls, parts: Sequence[BatchScores]) -> BatchScores:
        """The scores of batches run one after the other, as one batch of all their rows."""
        return cls(**{field.name: torch.cat([getattr(part, field.name) for part in parts])
                      for field in fields(cls)})


def batch_scores(
    loaded: LoadedModel,
    batch: PromptBatch,
    watched: torch.Tensor | None = None,
    *,
    labels: torch.Tensor | None = None,
    **forward: Any,
) -> BatchScores:
    """Forward ``batch`` and score its targets, teacher forced.

    ``watched`` (batch,) marks rows whose next-token distribution after the prompt is
    wanted as well. Logits are projected only at target tokens and after watched
    prompts. ``labels`` holds the rows with all their target tokens when ``batch``'s
    inputs stop before the last ones (default: ``batch.input_ids``). ``forward`` is
    passed on to ``output_logits``.
    """
    size = batch.input_ids.shape[0]
    device = batch.input_ids.device
    rows, logit_pos, token_pos = batch.target_positions()
    watched_rows = (
        torch.zeros(0, dtype=torch.long, device=device)
        if watched is None
        else torch.nonzero(watched).squeeze(1)
    )
    logits = output_logits(
        loaded,
        batch,
        torch.cat([rows, watched_rows]),
        torch.cat([logit_pos, batch.prompt_last[watched_rows]]),
        **forward,
    )
    log_probs = torch.log_softmax(logits, dim=-1)  # (targets + watched, vocab)
    target_log_probs = log_probs[: len(rows)]
    targets = (batch.input_ids if labels is None else labels)[rows, token_pos]
    token_nll = -target_log_probs.gather(1, targets[:, None]).squeeze(1)
    predicted = target_log_probs.argmax(dim=-1)
    nll_sum = torch.zeros(size, device=device).index_add(0, rows, token_nll)
    wrong = torch.zeros(size, device=device).index_add(0, rows, (predicted != targets).float())
    lengths = batch.target_lengths.clamp(min=1).to(nll_sum)
    others = target_log_probs.detach().scatter(1, targets[:, None], float("-inf"))
    token_margin = -token_nll.detach() - others.max(dim=-1).values
    margin = torch.full((size,), float("inf"), device=device).scatter_reduce(
        0, rows, token_margin, "amin"
    )
    return BatchScores(nll_sum / lengths, wrong == 0, margin, predicted, log_probs[len(rows) :])


# Scoring runs this long or longer shows a progress bar where a caller asked for them.
_BARS_FROM_BATCHES = 20
_bar_label: ContextVar[str | None] = ContextVar("scoring_progress", default=None)


@contextmanager
def scoring_progress(label: str) -> Iterator[None]:
    """Show a progress bar labelled ``label`` on long ``score_targets`` calls made in
    this block (a benchmark preparing or scoring thousands of prompts, say); calls
    elsewhere, such as the daemon's, stay quiet."""
    token = _bar_label.set(label)
    try:
        yield
    finally:
        _bar_label.reset(token)


def scoring_batches(starts: range) -> Iterable[int]:
    """``starts``, the first item of each batch of a scoring pass, under a progress bar
    where a caller asked for one (``scoring_progress``) and the pass is long."""
    label = _bar_label.get()
    return tqdm(starts, desc=label, unit="batch", leave=False,
                disable=label is None or len(starts) < _BARS_FROM_BATCHES)


def score_targets(
    loaded: LoadedModel, rows: list[PromptSpec], *, batch_size: int = 32
) -> list[TargetScore]:
    """Score each row's ``target_ids`` after its prompt (no gradients), in row order.

    Each distinct row is scored once, so rows that are equal get equal scores: a
    comparison between two of them is an exact tie, whatever batch they would have
    shared. Rows run in batches of like token length, so a short row is not padded
    to a long one.
    """
    distinct = _shortest_first(loaded, list(dict.fromkeys(rows)))
    scores: dict[PromptSpec, TargetScore] = {}
    for start in scoring_batches(range(0, len(distinct), batch_size)):
        chunk = distinct[start : start + batch_size]
        batch = encode(loaded, chunk)
        with torch.no_grad():
            scores_of_batch = batch_scores(loaded, batch)
        nll, exact = scores_of_batch.nll, scores_of_batch.exact
        predicted = scores_of_batch.predicted.tolist()
        cursor = 0
        for index, row in enumerate(chunk):
            length = len(row.target_ids)
            scores[row] = TargetScore(
                mean_nll=float(nll[index]),
                exact=bool(exact[index]),
                predicted=tuple(predicted[cursor : cursor + length]),
            )
            cursor += length
    return [scores[row] for row in rows]


def stated_facts(loaded: LoadedModel,
                 facts: Sequence[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """The (template, subject, object) ``facts`` whose object is the model's greedy
    answer to the template filled with the subject (teacher forced), in order."""
    scores = score_targets(loaded, [PromptSpec(template, subject, object_ids(loaded, obj))
                                    for template, subject, obj in facts])
    return [fact for fact, score in zip(facts, scores, strict=True) if score.exact]


def _shortest_first(loaded: LoadedModel, rows: list[PromptSpec]) -> list[PromptSpec]:
    """``rows`` sorted by token length, prompt and target together; stable on ties."""
    if not rows:
        return []
    prompts = loaded.tokenizer([row.text for row in rows], add_special_tokens=False)
    lengths = [len(ids) + len(row.target_ids)
               for ids, row in zip(prompts["input_ids"], rows, strict=True)]
    return [rows[index] for index in sorted(range(len(rows)), key=lengths.__getitem__)]
