"""Greedy completions, and reading a short answer out of one."""

from __future__ import annotations

import re

import torch

from factsync.models.loading import LoadedModel

_ANSWER_END = re.compile(r"[\n.,;:!?()\"]|\s(?:and|which|who|where|in|the|a|an|is|was)\s")


def greedy(loaded: LoadedModel, prompt: str, max_new_tokens: int) -> str:
    """Greedy completion of ``prompt`` after the model's prompt prefix."""
    ids = loaded.prefix_ids + loaded.tokenizer(prompt)["input_ids"]
    tensor = torch.tensor([ids], device=loaded.device)
    with torch.no_grad():
        out = loaded.model.generate(
            tensor,
            attention_mask=torch.ones_like(tensor),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=loaded.tokenizer.pad_token_id or 0,
        )
    return loaded.tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True)


def short_answer(completion: str) -> str:
    """The leading phrase of a completion, e.g. ``" Paris, the city of"`` -> ``"Paris"``."""
    text = completion.strip()
    match = _ANSWER_END.search(text, 1)
    return (text[: match.start()] if match else text).strip()
