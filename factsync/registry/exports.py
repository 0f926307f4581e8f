"""Exports of the live version for serving engines, written atomically.

``exports/<kind>/<version>/`` is written under a temporary name and renamed into
place; ``exports/<kind>/current`` is a symbolic link swapped atomically to the newest.
Kinds: ``adapter`` (a PEFT LoRA adapter) and ``merged`` (a full HuggingFace checkpoint).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from factsync.durable import save_tensors
from factsync.failpoints import failpoint

CURRENT = "current"


class ExportDir:
    """The ``exports/`` directory of a data directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def clean(self) -> list[Path]:
        """Remove what an interrupted write left behind (staging directories, temp links)."""
        removed = []
        for leftover in [*self.root.glob("*/.staging-*"), *self.root.glob(f"*/.{CURRENT}-*")]:
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
            removed.append(leftover)
        return removed

    def write(self, kind: str, version_id: str, writer: Callable[[Path], None]) -> Path:
        """Have ``writer`` fill a fresh directory, move it into place, point ``current`` at it."""
        parent = self.root / kind
        parent.mkdir(parents=True, exist_ok=True)
        target = parent / version_id
        if not target.exists():
            staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=parent))
            try:
                writer(staging)
                failpoint("export.staged")
                staging.rename(target)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        self.point_current(kind, version_id)
        return target

    def point_current(self, kind: str, version_id: str) -> None:
        """Swap ``<kind>/current`` to ``version_id`` in one rename."""
        link = self.root / kind / CURRENT
        temporary = link.with_name(f".{CURRENT}-{os.getpid()}")
        temporary.unlink(missing_ok=True)
        temporary.symlink_to(version_id)
        os.replace(temporary, link)

    def current(self, kind: str) -> Path | None:
        """The directory ``current`` names, if any."""
        link = self.root / kind / CURRENT
        return link.resolve() if link.exists() else None


def write_peft_adapter(
    directory: Path,
    factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    *,
    base_model: str,
    fan_in_fan_out: bool,
    metadata: Mapping[str, object],
) -> None:
    """A PEFT LoRA adapter whose update of each module is exactly ``B @ A``.

    ``factors`` maps module paths to (A (rank, in), B (out, rank)). Each module's
    ``lora_alpha`` equals its rank, so PEFT's scaling is 1.
    """
    tensors = {}
    ranks = {}
    for path, (a, b) in factors.items():
        tensors[f"base_model.model.{path}.lora_A.weight"] = a.contiguous().cpu()
        tensors[f"base_model.model.{path}.lora_B.weight"] = b.contiguous().cpu()
        ranks[path] = int(a.shape[0])
    top = max(ranks.values())
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "target_modules": sorted(ranks),
        "r": top,
        "lora_alpha": top,
        "rank_pattern": {f"^{p}$": r for p, r in ranks.items()},
        "alpha_pattern": {f"^{p}$": r for p, r in ranks.items()},
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": fan_in_fan_out,
        "inference_mode": True,
    }
    (directory / "adapter_config.json").write_text(json.dumps(config, indent=2))
    save_tensors(directory / "adapter_model.safetensors", tensors)
    (directory / "factsync.json").write_text(json.dumps(dict(metadata), indent=2, default=str))
