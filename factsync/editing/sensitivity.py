"""How much ordinary text's predictions feel a change of one layer's hidden state.

The sensitivity of layer L is ``F = E[g g^T]``, with ``g`` the gradient of
``log p(y | text)`` with respect to the hidden state ``h_t`` that layer L outputs at a
token t, and ``y`` drawn from the model's own next-token distributions: the Fisher
information of the model's predictions about ``h_t``. To second order, a shift ``s``
added to the hidden states costs ordinary text ``s^T F s / 2`` nats per token. A shift
the spread carries to ordinary text hurts by its length in this metric, not by its
Euclidean length: the ``natural`` step rule of the z optimisation (``targets``) spends
its steps where F is small.

``sensitivity_for`` keeps it on disk beside the key statistics, once per model, layer,
corpus and budget. The default model's, over its shipped corpus, ships too
(``SHIPPED_SENSITIVITIES``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from tqdm.auto import tqdm

from factsync.editing.corpus import corpus_digest
from factsync.editing.covariance import lead_ids, padded_windows, token_windows, window_batches
from factsync.editing.tensor_cache import cached_tensor
from factsync.models.hooks import forward_hooks, frozen_parameters, hidden_of, with_hidden
from factsync.models.loading import LoadedModel

log = logging.getLogger(__name__)

SENSITIVITY_TOKENS = 32_768
"""Tokens behind F by default: about 57 per dimension of SmolLM2-135M's hidden state."""
SENSITIVITY_FORMAT = "1"
SHIPPED_SENSITIVITIES = Path(__file__).parent / "sensitivities"
"""Sensitivities computed once for the default model, laid out as the cache is
(``<fingerprint>/<file>``): a first start skips minutes of gradients."""


def compute_sensitivity(loaded: LoadedModel, layer: int, texts: list[str], *,
                        token_budget: int = SENSITIVITY_TOKENS, batch_size: int = 4,
                        max_length: int = 256, seed: int = 0,
                        progress: bool = True) -> torch.Tensor:
    """(hidden, hidden) float64 sensitivity of ``layer``'s output over ``texts``.

    Texts are cut into windows as for the key statistics (``compute_key_statistics``)
    and every counted token's gradient enters until ``token_budget`` tokens have; the
    labels are sampled with ``seed``. The model is left unchanged.
    """
    if not 0 <= layer < loaded.num_layers:
        raise ValueError(f"layer {layer} is outside the model's 0..{loaded.num_layers - 1}")
    if token_budget <= 0:
        raise ValueError(f"token_budget must be positive, got {token_budget}")
    lead = lead_ids(loaded)
    size = loaded.model.config.hidden_size
    device = loaded.device
    total = torch.zeros((size, size), dtype=torch.float64, device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    counted = 0
    windows = window_batches(token_windows(loaded, texts, lead, max_length), batch_size)
    with (tqdm(total=token_budget, unit="tok", desc=f"sensitivity of layer {layer}",
               disable=not progress) as bar, frozen_parameters(loaded.model)):
        for batch in windows:
            gradients = _batch_gradients(loaded, layer, batch, len(lead), generator)
            taken = gradients[: token_budget - counted].to(torch.float64)
            total.addmm_(taken.T, taken)
            counted += len(taken)
            bar.update(len(taken))
            if counted >= token_budget:
                break
    if counted == 0:
        raise ValueError("the corpus holds no tokens to measure sensitivity over")
    if counted < token_budget:
        log.warning("the corpus ran out after %d of the %d tokens budgeted for sensitivity",
                    counted, token_budget)
    return (total / counted).cpu()


def _batch_gradients(loaded: LoadedModel, layer: int, batch: list[list[int]],
                     lead_length: int, generator: torch.Generator) -> torch.Tensor:
    """(counted tokens, hidden) gradients of the sampled labels' log-likelihood with
    respect to ``layer``'s output, in text order."""
    input_ids, mask, counted = padded_windows(loaded, batch, lead_length)
    device = loaded.device
    probes: list[torch.Tensor] = []

    def probe(_module: torch.nn.Module, _args: tuple, output: object) -> object:
        hidden = hidden_of(output)
        zero = torch.zeros_like(hidden, requires_grad=True)
        probes.append(zero)
        return with_hidden(output, hidden + zero)

    with forward_hooks(loaded.model, {loaded.spec.layer_path(layer): probe}):
        logits = loaded.model(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                              use_cache=False).logits
    counted = counted.to(device)
    log_probs = torch.log_softmax(logits[counted].float(), dim=-1)  # (counted, vocab)
    with torch.no_grad():
        labels = torch.multinomial(log_probs.exp(), 1, generator=generator)
    log_probs.gather(1, labels).sum().backward()
    return probes[0].grad[counted]


def sensitivity_for(loaded: LoadedModel, layer: int, texts: list[str], directory: Path, *,
                    token_budget: int = SENSITIVITY_TOKENS, max_length: int = 256) -> torch.Tensor:
    """``compute_sensitivity``'s answer, read from ``directory`` when it holds it, else
    copied there from the shipped ones or computed and stored there (one process
    computes while others wait)."""
    digest = corpus_digest(texts)
    entry = (Path(loaded.fingerprint)
             / f"sensitivity-layer{layer}-{digest}-{token_budget}-len{max_length}.safetensors")
    expected = {"format": SENSITIVITY_FORMAT, "fingerprint": loaded.fingerprint,
                "layer": str(layer), "corpus_digest": digest,
                "token_budget": str(token_budget), "max_length": str(max_length)}
    return cached_tensor(
        directory / entry, "sensitivity", expected,
        f"the sensitivity of layer {layer} of {loaded.name} over {token_budget} tokens "
        f"(corpus {digest})",
        lambda: compute_sensitivity(loaded, layer, texts, token_budget=token_budget,
                                    max_length=max_length),
        shipped=SHIPPED_SENSITIVITIES / entry)
