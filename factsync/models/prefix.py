"""Reusing the part of each prompt that an edit at the subject cannot change.

A vector added to the residual stream at a row's last subject token changes nothing
before that token: attention is causal. So when the same rows are run again and again
with different added vectors (the z optimisation), the keys and values of the tokens
before the subject's last token can be computed once and reused, and every later pass
runs only the rest of the row.

Rows are re-laid so that every row's last subject token sits at one column, the
``split``: shorter beginnings are padded on the left. Each token keeps the position it
has in its own row, so attention sees exactly the text it saw before. Columns after the
last one whose logit is read are dropped: a row's final target token is only a label.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache

from factsync.models.text import PromptBatch


@dataclass(frozen=True)
class AlignedBatch:
    """A batch whose rows all have their last subject token at column ``split``.

    Attributes:
        full: the rows re-laid (``subject_last`` equals ``split`` in every row), up to
            the last column whose logit is read.
        positions: (batch, tokens) each token's position in its own row.
        split: the column of every row's last subject token.
        labels: (batch, at least tokens) the re-laid rows with every target token:
            where scoring reads its targets.
    """

    full: PromptBatch
    positions: torch.Tensor
    split: int
    labels: torch.Tensor

    def suffix(self) -> PromptBatch:
        """Columns from ``split`` on: the part of each row an edit there can change.

        Its ``attention_mask`` covers the suffix only; forward passes over it need the
        whole row's mask (``suffix_forward``).
        """
        full, split = self.full, self.split
        return PromptBatch(
            input_ids=full.input_ids[:, split:],
            attention_mask=full.attention_mask[:, split:],
            subject_first=(full.subject_first - split).clamp(min=0),
            subject_last=full.subject_last - split,
            prompt_last=full.prompt_last - split,
            target_lengths=full.target_lengths,
        )


def align_at_subject(batch: PromptBatch) -> AlignedBatch:
    """Re-lay right-padded ``batch`` so every row's last subject token is at one column."""
    shifts = (batch.subject_last.max() - batch.subject_last).tolist()
    lengths = batch.attention_mask.sum(dim=1).tolist()
    rows = len(lengths)
    width = max(length + shift for length, shift in zip(lengths, shifts, strict=True))
    device = batch.input_ids.device
    input_ids = torch.zeros((rows, width), dtype=batch.input_ids.dtype, device=device)
    attention_mask = torch.zeros((rows, width), dtype=batch.attention_mask.dtype, device=device)
    positions = torch.zeros((rows, width), dtype=torch.long, device=device)
    for row, (length, shift) in enumerate(zip(lengths, shifts, strict=True)):
        input_ids[row, shift : shift + length] = batch.input_ids[row, :length]
        attention_mask[row, shift : shift + length] = 1
        positions[row, shift : shift + length] = torch.arange(length, device=device)
    offset = torch.tensor(shifts, device=device)
    prompt_last = batch.prompt_last + offset
    read = int((batch.read_widths() + offset).max())
    full = PromptBatch(
        input_ids=input_ids[:, :read],
        attention_mask=attention_mask[:, :read],
        subject_first=batch.subject_first + offset,
        subject_last=batch.subject_last + offset,
        prompt_last=prompt_last,
        target_lengths=batch.target_lengths,
    )
    split = int(batch.subject_last.max())
    return AlignedBatch(full=full, positions=positions[:, :read], split=split, labels=input_ids)


def full_forward(aligned: AlignedBatch) -> tuple[dict[str, Any], DynamicCache]:
    """Keyword arguments that run the whole re-laid rows and fill a fresh cache.

    Pass them to ``models.scoring.batch_scores``; afterwards ``prefix_states`` reads the cache.
    """
    cache = DynamicCache()
    arguments = {
        "position_ids": aligned.positions,
        "cache": cache,
        "use_cache": True,
    }
    return arguments, cache


def prefix_states(cache: DynamicCache, split: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per decoder layer, the keys and values of the columns before ``split``."""
    return [
        (layer.keys[:, :, :split].detach(), layer.values[:, :, :split].detach())
        for layer in cache.layers
    ]


def suffix_forward(
    aligned: AlignedBatch,
    prefix: list[tuple[torch.Tensor, torch.Tensor]],
    rows: torch.Tensor,
    width: int | None = None,
) -> dict[str, Any]:
    """Keyword arguments that run only the suffix of ``rows`` over their cached prefix.

    Use them with ``aligned.suffix().select(rows)``, or with its ``first_columns(width)``
    when ``width`` suffix columns are all those rows read. The cache is built afresh from
    ``prefix`` on every call, so the stored prefix never grows.
    """
    split = aligned.split
    end = aligned.full.input_ids.shape[1] if width is None else split + width
    cache = DynamicCache([(keys[rows], values[rows]) for keys, values in prefix])
    return {
        "attention_mask": aligned.full.attention_mask[rows, :end],
        "position_ids": aligned.positions[rows, split:end],
        "cache": cache,
        "cache_position": torch.arange(split, end, device=rows.device),
        "use_cache": True,
    }


def width_groups(widths: Sequence[int], *, overhead: int) -> list[tuple[int, int]]:
    """Contiguous ``(start, end)`` groups of ascending row ``widths`` to run apart.

    A group runs padded to its widest row, and every pass costs ``overhead`` token
    columns' worth besides (launching each layer's work): the groups chosen make the
    summed ``rows * widest + overhead`` least. Short rows then stop paying for the
    columns of long ones.
    """
    if list(widths) != sorted(widths):
        raise ValueError("widths must be ascending")
    # Groups only ever end where the width changes (or at the last row).
    ends = [i + 1 for i in range(len(widths)) if i + 1 == len(widths) or widths[i + 1] != widths[i]]
    best = {0: (0, 0)}  # end -> (least cost of the rows before it, start of its last group)
    for end in ends:
        best[end] = min((best[start][0] + (end - start) * widths[end - 1] + overhead, start)
                        for start in best)
    groups: list[tuple[int, int]] = []
    end = len(widths)
    while end:
        start = best[end][1]
        groups.append((start, end))
        end = start
    return groups[::-1]
