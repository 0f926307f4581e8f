"""Turning prompts, subjects and objects into padded token batches.

Targets are built from token ids, never by re-tokenising concatenated strings: a leading
space changes the tokens of an object, and a subject tokenises differently at the start
of a prompt and after a prefix. The subject's last token is found with offset mappings
in the final string.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from factsync.models.loading import LoadedModel


@dataclass(frozen=True)
class PromptSpec:
    """One row to encode.

    Attributes:
        template: prompt text with ``{}`` where the subject goes, e.g. ``"{} is owned by"``.
        subject: the subject filled into ``template``.
        target_ids: token ids to append after the prompt (teacher forcing); may be empty.
        context: text put before the filled template (a context prefix), may be empty.
    """

    template: str
    subject: str
    target_ids: tuple[int, ...] = ()
    context: str = ""

    @property
    def text(self) -> str:
        """The prompt text without targets."""
        return self.context + self.template.format(self.subject)


@dataclass
class PromptBatch:
    """A right-padded batch of encoded prompts.

    Attributes:
        input_ids: (batch, tokens) ids, prompts followed by their targets.
        attention_mask: (batch, tokens) 1 on real tokens.
        subject_first: (batch,) index of each row's first subject token.
        subject_last: (batch,) index of each row's last subject token.
        prompt_last: (batch,) index of each row's last prompt token (predicts the first
            target token).
        target_lengths: (batch,) number of target tokens per row.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    subject_first: torch.Tensor
    subject_last: torch.Tensor
    prompt_last: torch.Tensor
    target_lengths: torch.Tensor

    def to(self, device: torch.device) -> PromptBatch:
        """This batch on ``device``."""
        return PromptBatch(*(t.to(device) for t in vars(self).values()))

    def select(self, rows: torch.Tensor) -> PromptBatch:
        """The sub-batch of ``rows`` (a 1-D index tensor)."""
        return PromptBatch(*(t.index_select(0, rows) for t in vars(self).values()))

    def first_columns(self, width: int) -> PromptBatch:
        """This batch cut to its first ``width`` columns (positions stay as they are)."""
        return replace(self, input_ids=self.input_ids[:, :width],
                       attention_mask=self.attention_mask[:, :width])

    def read_widths(self) -> torch.Tensor:
        """(batch,) columns each row needs: up to the last one whose logit is read."""
        return self.prompt_last + (self.target_lengths - 1).clamp(min=0) + 1

    def subject_tokens(self, row: int) -> tuple[int, ...]:
        """The token ids of ``row``'s subject."""
        first, last = int(self.subject_first[row]), int(self.subject_last[row])
        return tuple(self.input_ids[row, first : last + 1].tolist())

    def target_positions(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rows, logit positions, target token positions) of every target token.

        The logit at position ``p`` predicts the token at ``p + 1``.
        """
        rows, logit_pos, token_pos = [], [], []
        for row, (last, length) in enumerate(
            zip(self.prompt_last.tolist(), self.target_lengths.tolist(), strict=True)
        ):
            for offset in range(length):
                rows.append(row)
                logit_pos.append(last + offset)
                token_pos.append(last + offset + 1)
        device = self.input_ids.device
        as_tensor = lambda values: torch.tensor(values, dtype=torch.long, device=device)  # noqa: E731
        return as_tensor(rows), as_tensor(logit_pos), as_tensor(token_pos)


def object_ids(loaded: LoadedModel, obj: str) -> tuple[int, ...]:
    """Token ids of an object as it follows a prompt: with one leading space."""
    text = obj if obj.startswith(" ") else " " + obj
    ids = loaded.tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"object {obj!r} encodes to no tokens")
    return tuple(ids)


def read_back(loaded: LoadedModel, text: str) -> str:
    """``text`` as the model sees it after a space in a prompt: encoded, then decoded.

    It differs from ``text`` when the tokenizer drops or replaces characters (bytes
    missing from its vocabulary, normalisation), and then no edit can name it.
    """
    ids = loaded.tokenizer(" " + text, add_special_tokens=False)["input_ids"]
    decoded = loaded.tokenizer.decode(ids, clean_up_tokenization_spaces=False)
    return decoded.removeprefix(" ")


def encode(loaded: LoadedModel, rows: list[PromptSpec]) -> PromptBatch:
    """Encode ``rows`` into one right-padded batch on the model's device."""
    if not rows:
        raise ValueError("cannot encode an empty list of prompts")
    tokenizer = loaded.tokenizer
    sequences: list[list[int]] = []
    subject_first: list[int] = []
    subject_last: list[int] = []
    prompt_last: list[int] = []
    for row in rows:
        if "{}" not in row.template:
            raise ValueError(f"prompt template {row.template!r} has no '{{}}' for the subject")
        text = row.text
        encoded = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
        ids: list[int] = list(loaded.prefix_ids) + list(encoded["input_ids"])
        offset = len(loaded.prefix_ids)
        subject_start = len(row.context) + row.template.index("{}")
        subject_end = subject_start + len(row.subject)
        offsets = encoded["offset_mapping"]
        subject_first.append(offset + _token_at(offsets, subject_start, text))
        subject_last.append(offset + _token_at(offsets, subject_end - 1, text, last=True))
        prompt_last.append(len(ids) - 1)
        sequences.append(ids + list(row.target_ids))
    width = max(len(s) for s in sequences)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, sequence in enumerate(sequences):
        input_ids[index, : len(sequence)] = torch.tensor(sequence)
        attention_mask[index, : len(sequence)] = 1
    return PromptBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        subject_first=torch.tensor(subject_first),
        subject_last=torch.tensor(subject_last),
        prompt_last=torch.tensor(prompt_last),
        target_lengths=torch.tensor([len(r.target_ids) for r in rows]),
    ).to(loaded.device)


def _token_at(
    offsets: list[tuple[int, int]], char_index: int, text: str, *, last: bool = False
) -> int:
    """Index of the first (or ``last``) token whose character span covers ``char_index``.

    A character that byte-level BPE splits into several tokens is covered by all of
    them; the subject's last token is the last of those, or the key would be read
    half-way through a character.
    """
    order = range(len(offsets) - 1, -1, -1) if last else range(len(offsets))
    for index in order:
        start, end = offsets[index]
        if start <= char_index < end:
            return index
    raise ValueError(f"no token covers character {char_index} of {text!r}")
