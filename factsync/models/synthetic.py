"""Models built on the spot: a byte-level tokenizer trained on a few lines, and randomly
initialised Llama-family models of any shape.

They stand in for real checkpoints where weights cannot be had (a machine without the
model, a timing run of a large shape): the mechanics and the cost of editing depend on
the shapes, not on what the weights know.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

from factsync.models.loading import DTYPES, LoadedModel, model_fingerprint, prompt_prefix_ids
from factsync.models.specs import check_layout, spec_for

PREFIX_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<pad>"


def byte_tokenizer(texts: Sequence[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``texts``: it encodes any string, adds no
    start token itself and knows ``<|endoftext|>`` (the prompt prefix) and ``<pad>``."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PREFIX_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=PREFIX_TOKEN,
                                   pad_token=PAD_TOKEN)


@dataclass(frozen=True)
class LlamaShape:
    """The sizes of a Llama-family decoder."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int


LLAMA3_8B = LlamaShape(hidden=4096, intermediate=14336, layers=32, heads=32, kv_heads=8)


def random_llama(tokenizer: PreTrainedTokenizerFast, shape: LlamaShape, *, seed: int = 0,
                 dtype: str = "float32", device: str = "cpu") -> LoadedModel:
    """A randomly initialised Llama of ``shape`` with ``tokenizer``'s vocabulary, built
    directly on ``device`` in ``dtype``."""
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=shape.hidden,
        intermediate_size=shape.intermediate, num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
        max_position_embeddings=4096, bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=DTYPES[dtype])
    model.eval()
    spec = spec_for(model.config.model_type)
    check_layout(spec, model, model.config.hidden_size)
    return LoadedModel(model=model, tokenizer=tokenizer, spec=spec,
                       name=f"random-llama-{shape.hidden}x{shape.layers}",
                       prefix_ids=prompt_prefix_ids(tokenizer, spec),
                       fingerprint=model_fingerprint(model))
