"""Reliability fixtures: a daemon on a tiny model, so each fault case takes seconds.

- ``tiny_daemon``: a factory ``tiny_daemon(data_dir, **config)`` returning a
  ``DaemonProcess`` that edits a tiny random Llama saved to disk, under a policy with no
  gates (every edit is promoted), so the tests exercise the daemon's bookkeeping rather
  than edit quality.
- ``tiny_model_dir``: that model's directory.
"""

from __future__ import annotations

from pathlib import Path

import pytest

TINY_POLICY = {
    "name": "reliability",
    "batch": {"coalesce_seconds": 0.2},
    "editing": {"max_iterations": 1, "neighbours": False},
    "gates": [],
    "monitor": {"interval_seconds": 3600},
}


@pytest.fixture
def tiny_model_dir(tmp_path_factory, tiny_loaded) -> Path:
    directory = tmp_path_factory.mktemp("tiny-model")
    loaded = tiny_loaded("llama")
    loaded.model.save_pretrained(directory)
    loaded.tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture
def tiny_daemon(daemon_process, tiny_model_dir, tmp_path_factory):
    caches = tmp_path_factory.mktemp("tiny-caches")

    def make(data_dir: Path, **config):  # noqa: ANN003, ANN202
        return daemon_process(
            data_dir, policy=config.pop("policy", TINY_POLICY), cache_dir=str(caches),
            model={"path": str(tiny_model_dir), "device": "cpu", "corpus_tokens": 1000},
            **config,
        )

    return make
