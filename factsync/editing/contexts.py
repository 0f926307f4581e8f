"""Context prefixes: short texts put before edit prompts so an edit generalises.

They are sampled from the model itself (top-k sampling from a few common openings), so
they need no data and read like the model's own text.
"""

from __future__ import annotations

import torch

from factsync.models.loading import LoadedModel

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
