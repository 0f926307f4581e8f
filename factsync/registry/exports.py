"""Exports of the live version for serving engines, written atomically.

``exports/<kind>/<version>/`` is written under a temporary name and renamed into
place; ``exports/<kind>/current`` is a symbolic link swapped atomically to the export
being served, once the exporter has accepted it.
Kinds: ``adapter`` (a PEFT LoRA adapter), ``merged`` (a full HuggingFace checkpoint)
and ``base`` (a folded version's checkpoint, which later adapters apply to).
``exports/served.json`` names the version and base serving engines were last told of.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from factsync.durable import (
    STAGING_DIR_PREFIX,
    replace_symlink,
    save_tensors,
    write_directory,
    write_json,
    write_text,
)
from factsync.failpoints import failpoint

CURRENT = "current"
SERVED = "served.json"


class ExportDir:
    """The ``exports/`` directory of a data directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def clean(self) -> list[Path]:
        """Remove what an interrupted write left behind (staging directories, temp links)."""
        removed = []
        leftovers = [*self.root.glob(f"*/{STAGING_DIR_PREFIX}*"),
                     *self.root.glob(f"*/.{CURRENT}.*.tmp")]
        for leftover in leftovers:
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
            removed.append(leftover)
        return removed

    def write(self, kind: str, version_id: str, writer: Callable[[Path], None]) -> Path:
        """Have ``writer`` fill a fresh directory and move it into place, unless the
        version's export exists already; ``current`` is left alone (``point_current``)."""
        target = self.root / kind / version_id
        if not target.exists():

            def fill(staging: Path) -> None:
                writer(staging)
                failpoint("export.staged")

            write_directory(target, fill)
        return target

    def point_current(self, kind: str, version_id: str) -> None:
        """Swap ``<kind>/current`` to ``version_id`` in one rename."""
        replace_symlink(self.root / kind / CURRENT, version_id)

    def clear_current(self, kind: str) -> None:
        """Remove ``<kind>/current``: nothing of that kind is to be served."""
        (self.root / kind / CURRENT).unlink(missing_ok=True)

    def record_served(self, version_id: str, base: str) -> None:
        """Remember, durably, the version and base serving engines were last told of."""
        write_json(self.root / SERVED, {"version": version_id, "base": base})

    def served(self) -> tuple[str | None, str | None]:
        """The version and base last recorded by ``record_served`` (``None`` for none)."""
        path = self.root / SERVED
        if not path.is_file():
            return None, None
        record = json.loads(path.read_text())
        return record["version"], record["base"]

    def current(self, kind: str) -> Path | None:
        """The directory ``current`` names, if any."""
        link = self.root / kind / CURRENT
        return link.resolve() if link.exists() else None


def adapter_base(directory: Path) -> Path:
    """The base model an adapter written by ``write_peft_adapter`` applies to."""
    config = json.loads((directory / "adapter_config.json").read_text())
    return Path(config["base_model_name_or_path"])


def adapter_rank(directory: Path) -> int:
    """The rank of an adapter written by ``write_peft_adapter``."""
    return int(json.loads((directory / "adapter_config.json").read_text())["r"])


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
    write_json(directory / "adapter_config.json", config)
    save_tensors(directory / "adapter_model.safetensors", tensors)
    write_text(directory / "factsync.json", json.dumps(dict(metadata), indent=2, default=str))
