"""What one fact's edit, applied alone, costs ordinary text: to second order, from F.

A target shift's felt cost ``s^T F s / 2`` (``target_shifts``) is what ordinary text
would lose if the shift were added at every token. The spread adds it only where the
edited weights' keys carry it, so what a fact really costs also depends on how far its
weight update reaches ordinary text's keys. This measures that cost directly: the fact's
target is spread alone over the edit layers (nothing else held in place), and the output
``h_t`` of the last edit layer is read on ordinary-text tokens with and without the
update. With ``d_t`` the change and F the layer's sensitivity, ``d_t^T F d_t / 2``
averaged over the tokens is the nats per token the fact's edit costs ordinary text, to
second order, without the noise of a perplexity measurement. Spreading a job's facts
together instead says how far their updates add up on ordinary text beyond the sum of
their costs alone.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from factsync.editing.covariance import lead_ids, padded_windows, token_windows, window_batches
from factsync.editing.delta import applied
from factsync.editing.engine import EditEngine
from factsync.editing.requests import EditRequest
from factsync.editing.spread import spread
from factsync.models.hooks import capture_hidden, forward_through
from factsync.models.loading import LoadedModel

HARM_TOKENS = 4096
"""Ordinary-text tokens each fact's cost is averaged over by default."""


class TextProbe:
    """Reads the output of ``layer`` on the counted tokens of ``texts`` (up to
    ``token_budget``), windowed as the key statistics are."""

    def __init__(self, loaded: LoadedModel, layer: int, texts: list[str], *,
                 token_budget: int = HARM_TOKENS, batch_size: int = 8,
                 max_length: int = 256) -> None:
        if token_budget <= 0:
            raise ValueError(f"token_budget must be positive, got {token_budget}")
        self.loaded, self.layer = loaded, layer
        lead = lead_ids(loaded)
        self.batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        counted = 0
        for batch in window_batches(token_windows(loaded, texts, lead, max_length), batch_size):
            input_ids, mask, rows = padded_windows(loaded, batch, len(lead))
            self.batches.append((input_ids, mask, rows))
            counted += int(rows.sum())
            if counted >= token_budget:
                break
        if counted == 0:
            raise ValueError("the texts hold no tokens to measure the harm on")
        self.token_budget = min(token_budget, counted)

    @torch.no_grad()
    def hidden(self) -> torch.Tensor:
        """(tokens, hidden) float64 outputs of the layer on the model as it is now."""
        device = self.loaded.device
        parts = []
        for input_ids, mask, rows in self.batches:
            with capture_hidden(self.loaded, [self.layer]) as captured:
                forward_through(self.loaded, self.layer, input_ids=input_ids.to(device),
                                attention_mask=mask.to(device), use_cache=False)
            parts.append(captured[self.layer][rows.to(device)].double())
        return torch.cat(parts)[: self.token_budget]


def edit_harms(engine: EditEngine, requests: list[EditRequest], targets: torch.Tensor,
               probe: TextProbe, sensitivity: torch.Tensor, *, together: int = 1,
               before: torch.Tensor | None = None, progress: bool = True) -> list[float]:
    """Per group of ``together`` consecutive requests (the last may be smaller), the
    ``mean_t d_t^T F d_t / 2`` of their targets (rows of ``targets``, at the engine's
    last edit layer) spread together with the engine's settings, F = ``sensitivity`` of
    the probe's layer: with ``together=1``, each fact's edit alone; with a job's size,
    each job's. ``before`` is ``probe.hidden()`` on the model as it is, when the caller
    already read it for another grouping. The model is left as found."""
    if probe.layer != engine.layers[-1]:
        raise ValueError(f"the probe reads layer {probe.layer}, the targets are at layer "
                         f"{engine.layers[-1]}")
    if together < 1:
        raise ValueError(f"together must be at least 1, got {together}")
    loaded = engine.loaded
    metric = sensitivity.to(device=loaded.device, dtype=torch.float64)
    before = probe.hidden() if before is None else before
    harms = []
    starts = range(0, len(requests), together)
    for start in tqdm(starts, unit="edit", disable=not progress,
                      desc="each fact's edit alone" if together == 1 else "each job's edit"):
        group = requests[start : start + together]
        update, _, _ = spread(loaded, [(r.template, r.subject) for r in group],
                              targets[start : start + together], engine.layers,
                              engine.contexts, engine.layer_contexts, engine.settings.spread)
        with applied(loaded, update):
            change = probe.hidden() - before
        harms.append(float(0.5 * ((change @ metric) * change).sum(dim=1).mean()))
    return harms
