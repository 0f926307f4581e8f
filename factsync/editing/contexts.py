"""Context prefixes: short texts put before edit prompts so an edit generalises.

They are sampled from the model itself (top-k sampling from a few common openings), so
they need no data and read like the model's own text. Sampling them takes seconds of
generation on a CPU at every engine build, so ``contexts_for`` keeps them on disk beside
the key statistics, once per model.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from factsync.cache_lock import computing
from factsync.durable import write_json
from factsync.models.loading import LoadedModel

log = logging.getLogger(__name__)

OPENINGS = ("The", "Therefore", "Because", "I", "You")


def sample_contexts(
    loaded: LoadedModel, *, per_opening: int = 1, length: int = 10, seed: int = 0
) -> list[str]:
    """The bare context ``""`` plus ``per_opening`` sampled prefixes per opening.

    Each prefix is ``length`` tokens of model text ending in ``". "``; braces are removed
    so a prefix can never be mistaken for a template slot.
    """
    tokenizer = loaded.tokenizer
    contexts = [""]
    generator = torch.Generator(device="cpu").manual_seed(seed)
    for opening in OPENINGS:
        ids = loaded.prefix_ids + tokenizer(opening, add_special_tokens=False)["input_ids"]
        for _ in range(per_opening):
            sequence = torch.tensor([ids], device=loaded.device)
            with torch.no_grad():
                for _ in range(length):
                    logits = loaded.model(input_ids=sequence).logits[0, -1].float().cpu()
                    # top-k 5 keeps prefixes fluent but varied.
                    top = torch.topk(logits, k=5)
                    choice = torch.multinomial(
                        torch.softmax(top.values, -1), 1, generator=generator
                    )
                    next_id = top.indices[choice].to(loaded.device)
                    sequence = torch.cat([sequence, next_id.view(1, 1)], dim=1)
            text = tokenizer.decode(sequence[0, len(loaded.prefix_ids) :], skip_special_tokens=True)
            cleaned = " ".join(text.replace("{", " ").replace("}", " ").split())
            contexts.append(cleaned + ". ")
    return contexts


def contexts_for(loaded: LoadedModel, directory: Path) -> list[str]:
    """``sample_contexts(loaded)``, read from ``directory`` when it holds them for this
    model (its fingerprint and dtype), else sampled and stored there. A damaged file, or
    one sampled from other openings, is sampled again."""
    dtype = str(loaded.model.dtype).removeprefix("torch.")
    path = directory / loaded.fingerprint / f"contexts-{dtype}.json"
    with computing(path, "the context prefixes"):
        found = _read_contexts(path)
        if found is not None:
            return found
        contexts = sample_contexts(loaded)
        write_json(path, {"openings": list(OPENINGS), "contexts": contexts})
        return contexts


def _read_contexts(path: Path) -> list[str] | None:
    """The stored contexts, or ``None`` when there are none or they cannot be used
    (logged at WARNING)."""
    if not path.exists():
        return None
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        contexts, openings = stored["contexts"], stored["openings"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("context prefixes %s are unreadable (%s); sampling them again", path, exc)
        return None
    usable = (openings == list(OPENINGS) and isinstance(contexts, list)
              and len(contexts) == len(OPENINGS) + 1 and contexts[0] == ""
              and all(isinstance(c, str) for c in contexts))
    if not usable:
        log.warning("context prefixes %s were not sampled as they are now; sampling them "
                    "again", path)
        return None
    return contexts
