"""Shared fixtures: tiny randomly initialised models of every supported family.

Tests of mechanics (hooks, statistics, deltas, caches) run on these instead of a real
checkpoint, and need no download: the tokenizer is a byte-level BPE trained in a few
milliseconds on ``TOKENIZER_TEXT``. Like the default model's tokenizer it adds no start
token itself and knows ``<|endoftext|>``, so ``loaded.prefix_ids`` is that token's id,
and it encodes any string (bytes never become unknown tokens).

Fixtures:
- ``tiny_loaded``: a factory ``tiny_loaded(family="llama", *, seed=0, num_layers=4)``
  returning a fresh ``LoadedModel`` (eval mode, CPU, float32). The same arguments give
  identical weights and fingerprint; a different ``seed`` gives other weights.
- ``tiny_model_dir``: ``tiny_loaded("llama")`` saved as a model directory.
- ``tiny_family``: parametrised over ``TINY_FAMILIES``; use it with ``tiny_loaded`` to
  run a test once per family.
- ``tiny_tokenizer``: a fresh tokenizer of the kind the models use.
- ``daemon_process``: the ``DaemonProcess`` class (a real ``factsync run`` in a
  subprocess); every instance started in a test is killed if still running at its end.
- ``tiny_daemon``: a factory ``tiny_daemon(directory, corpus_tokens=1000, **config)``
  returning a ``DaemonProcess`` that edits a tiny random Llama saved to disk, under a
  policy with no gates (every edit is promoted), with caches of its own unless
  ``cache_dir`` says where, so tests exercise the daemon's bookkeeping rather than
  edit quality, in seconds.
- ``postgres``: the SQLAlchemy URL of a throw-away PostgreSQL server on loopback.
- ``random_delta``: a factory ``random_delta(loaded, layers, rank=2, scale=0.1, seed=0)``
  returning a seeded random low-rank ``ModelDelta`` on the MLP output of ``layers``.
- ``clock``: a settable clock (``clock.now``, epoch seconds from 1000), for stores and
  reconcilers whose behaviour depends on time.
- ``restored_logging`` (autouse): the root logger's level as it was before each test,
  and no stream handler added by the test. ``factsync.cli.main`` sets up logging for
  the process; a test that calls it would otherwise leave every later test logging at
  INFO through a handler on its own captured stderr: a 100,000-row ingest took four
  times as long after one.
- ``tiny_engine``: a factory ``tiny_engine(loaded, **settings)`` returning an
  ``EditEngine`` with key statistics of ``ENGINE_TEXTS``, the prefixes ``ENGINE_CONTEXTS``,
  fast target settings and one pass without NME; keywords replace fields of
  ``EngineSettings``.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPTJConfig,
    GPTNeoXConfig,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedTokenizerFast,
)

from factsync.bench.live_daemon import DaemonProcess, free_port
from factsync.editing.covariance import compute_key_statistics
from factsync.editing.delta import LayerDelta, ModelDelta
from factsync.editing.engine import EditEngine, EngineSettings
from factsync.editing.joint_spread import joint_second_moment
from factsync.editing.sensitivity import compute_sensitivity
from factsync.editing.targets import TargetSettings
from factsync.models.loading import LoadedModel, model_fingerprint, prompt_prefix_ids
from factsync.models.specs import check_layout, get_module, key_value_dims, spec_for
from factsync.models.synthetic import byte_tokenizer

TINY_FAMILIES = ("llama", "gpt2", "gptj", "gpt_neox")

TOKENIZER_TEXT = (
    "The capital of France is Paris. The capital of Italy is Rome.",
    "Danielle Darrieux was a French actress. Her mother tongue is French.",
    "Toko Yasuda plays the guitar. Apple A5 was created by Apple.",
    "LinkedIn is owned by Microsoft. Skype is owned by Microsoft too.",
    "Once upon a time, in 1998, scientists found a new city in the north.",
    "Here is how to write a letter: Dear customer, thank you for your order.",
)
# 256 byte symbols, two special tokens and a few hundred merges: small but realistic.
TOKENIZER_VOCAB_SIZE = 400


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained offline on ``TOKENIZER_TEXT``."""
    return byte_tokenizer(TOKENIZER_TEXT, TOKENIZER_VOCAB_SIZE)


def tiny_config(
    family: str, tokenizer: PreTrainedTokenizerFast, num_layers: int
) -> PretrainedConfig:
    """A config of ``family`` with hidden size 32 and MLP keys of 64 (gpt2, gptj: 128)."""
    vocab_size = len(tokenizer)
    common = {
        "bos_token_id": tokenizer.eos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        # Wider than the usual 0.02, so that logits can move far enough for an edit
        # to change what a tiny model predicts.
        "initializer_range": 0.3,
    }
    if family == "llama":
        return LlamaConfig(
            **common,
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=num_layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
        )
    if family == "gpt2":
        return GPT2Config(
            **common,
            vocab_size=vocab_size,
            n_embd=32,
            n_layer=num_layers,
            n_head=4,
            n_positions=512,
        )
    if family == "gptj":
        return GPTJConfig(
            **common,
            vocab_size=vocab_size,
            n_embd=32,
            n_layer=num_layers,
            n_head=4,
            rotary_dim=4,
            n_positions=512,
        )
    if family == "gpt_neox":
        return GPTNeoXConfig(
            **common,
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=num_layers,
            num_attention_heads=4,
            max_position_embeddings=512,
        )
    raise ValueError(f"no tiny config for family {family!r}; known: {TINY_FAMILIES}")


def build_tiny_loaded(family: str = "llama", *, seed: int = 0, num_layers: int = 4) -> LoadedModel:
    """A ``LoadedModel`` of a tiny random ``family`` model with a fresh tiny tokenizer."""
    tokenizer = build_tiny_tokenizer()
    config = tiny_config(family, tokenizer, num_layers)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    model.eval()
    spec = spec_for(model.config.model_type)
    check_layout(spec, model, model.config.hidden_size)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        spec=spec,
        name=f"tiny-{family}-{seed}",
        prefix_ids=prompt_prefix_ids(tokenizer, spec),
        fingerprint=model_fingerprint(model),
    )


@pytest.fixture(autouse=True)
def restored_logging():
    """Undo a test's ``configure_logging`` (see the module docstring): the root level as
    before, and no stream handler left writing to the test's captured stderr. pytest's
    own capture handlers (subclasses) are its to add and remove."""
    root = logging.getLogger()
    handlers, level = set(root.handlers), root.level
    yield
    for handler in root.handlers[:]:
        if type(handler) is logging.StreamHandler and handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A fresh tiny tokenizer (the kind ``tiny_loaded`` models use)."""
    return build_tiny_tokenizer()


@pytest.fixture
def tiny_loaded() -> Callable[..., LoadedModel]:
    """Factory of tiny models: ``tiny_loaded(family="llama", *, seed=0, num_layers=4)``.

    Every call builds a fresh model, so a test may change weights freely.
    """
    return build_tiny_loaded


@pytest.fixture
def tiny_model_dir(tmp_path_factory, tiny_loaded) -> Path:
    """``tiny_loaded("llama")`` written as a model directory (weights and tokenizer)."""
    directory = tmp_path_factory.mktemp("tiny-model")
    loaded = tiny_loaded("llama")
    loaded.model.save_pretrained(directory)
    loaded.tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(params=TINY_FAMILIES)
def tiny_family(request: pytest.FixtureRequest) -> str:
    """Each supported family in turn (llama, gpt2, gptj, gpt_neox)."""
    return request.param


def _random_delta(loaded, layers, rank=2, scale=0.1, seed=0) -> ModelDelta:  # noqa: ANN001
    generator = torch.Generator().manual_seed(seed)
    updates = {}
    for layer in layers:
        path = loaded.spec.mlp_out_path(layer)
        key_size, value_size = key_value_dims(loaded.spec, get_module(loaded.model, path))
        updates[path] = LayerDelta(
            up=torch.randn(value_size, rank, generator=generator) * scale,
            down=torch.randn(key_size, rank, generator=generator) * scale,
        )
    return ModelDelta(layers=updates, layout=loaded.spec.weight_layout, metadata={"k": "v"})


@pytest.fixture
def random_delta() -> Callable[..., ModelDelta]:
    """Factory of seeded random low-rank deltas (see the module docstring)."""
    return _random_delta


ENGINE_TEXTS = [
    "The capital of France is Paris and the capital of Italy is Rome.",
    "Danielle Darrieux was a French actress whose mother tongue is French.",
    "LinkedIn is owned by Microsoft, and so is Skype.",
    "Once upon a time, in 1998, scientists found a new city in the north.",
] * 6
ENGINE_CONTEXTS = ["", "Once upon a time. ", "Dear customer, thank you. "]
# Random tiny models have small hidden norms, so the usual clamp would pin the delta.
FAST_TARGETS = TargetSettings(
    steps=20, learning_rate=1.0, stop_nll=0.3, chunk_size=2, clamp_norm_factor=1e3, weight_decay=0.0
)


def _tiny_engine(loaded: LoadedModel, **changes: object) -> EditEngine:
    one_pass = EngineSettings(target=FAST_TARGETS, max_iterations=1, neighbours=False)
    settings = replace(one_pass, **changes)
    layers = settings.edit_layers(loaded)
    stats = compute_key_statistics(loaded, layers, ENGINE_TEXTS, token_budget=400,
                                   progress=False)
    sensitivity = (compute_sensitivity(loaded, layers[-1], ENGINE_TEXTS, token_budget=400,
                                       progress=False)
                   if settings.target.needs_sensitivity else None)
    joint_moment = (joint_second_moment(loaded, layers, ENGINE_TEXTS, token_budget=400,
                                        progress=False)
                    if settings.spread.joint_layers else None)
    return EditEngine(loaded, settings, stats, ENGINE_CONTEXTS, sensitivity=sensitivity,
                      joint_moment=joint_moment)


class Clock:
    """A settable clock, so tests control time-dependent behaviour."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    """A fresh settable clock (see ``Clock``)."""
    return Clock()


@pytest.fixture
def tiny_engine() -> Callable[..., EditEngine]:
    """Factory of engines for tiny models (see the module docstring)."""
    return _tiny_engine


def _postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


@pytest.fixture
def postgres():
    """A throw-away PostgreSQL server on loopback; yields its SQLAlchemy URL.

    Uses the Debian ``postgresql`` binaries (run as the ``postgres`` user when the tests
    run as root). Skipped where they are missing, except in CI (``CI`` set).
    """
    binaries = _postgres_bin()
    if binaries is None:
        if os.environ.get("CI"):
            pytest.fail("CI must install PostgreSQL (Debian package postgresql)")
        pytest.skip("PostgreSQL is not installed")
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    root = Path(tempfile.mkdtemp(prefix="factsync-pg-"))
    if as_user:
        shutil.chown(root, "postgres")
    data, port = root / "data", free_port()
    subprocess.run([*as_user, binaries / "initdb", "-D", data, "--auth=trust", "-U", "factsync",
                    "--no-sync"], check=True, capture_output=True)
    subprocess.run([*as_user, binaries / "pg_ctl", "-D", data, "-l", root / "server.log", "-w",
                    "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off",
                    "start"], check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://factsync@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, binaries / "pg_ctl", "-D", data, "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)



@pytest.fixture
def daemon_process():
    """The ``DaemonProcess`` class; processes still running after the test are stopped."""
    started: list[DaemonProcess] = []

    class Tracked(DaemonProcess):
        def start(self, **options) -> None:  # noqa: ANN003
            started.append(self)
            super().start(**options)

    yield Tracked
    for daemon in started:
        if daemon.process is not None and daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait(timeout=30)


TINY_POLICY = {
    "name": "reliability",
    "batch": {"coalesce_seconds": 0.2},
    "editing": {"max_iterations": 1, "neighbours": False},
    "gates": [],
    "monitor": {"interval_seconds": 3600},
}


@pytest.fixture
def tiny_daemon(daemon_process, tiny_model_dir, tmp_path_factory):
    """Factory of daemons on a tiny model (see the module docstring)."""
    caches = tmp_path_factory.mktemp("tiny-caches")

    def make(directory: Path, corpus_tokens: int = 1000, **config):  # noqa: ANN003, ANN202
        return daemon_process(
            directory, policy=config.pop("policy", TINY_POLICY),
            cache_dir=config.pop("cache_dir", str(caches)),
            model={"path": str(tiny_model_dir), "device": "cpu",
                   "corpus_tokens": corpus_tokens},
            **config,
        )

    return make
