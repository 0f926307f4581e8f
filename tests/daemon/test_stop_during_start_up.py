"""A daemon stopped while it samples its corpus exits cleanly, and its restart resumes."""

from __future__ import annotations

import json
import re

import pytest

from factsync.models.loading import ensure_default_model

pytestmark = pytest.mark.real_model


def test_sigterm_while_sampling_the_corpus_exits_at_once_and_the_restart_resumes(
    tmp_path, daemon_process
):
    model = ensure_default_model()  # the converted default model; caches start empty
    caches = tmp_path / "caches"
    # No corpus ships for 20,100 tokens, so the daemon samples one: 158 sequences, of
    # which the first batch (64 on a CPU) is 40%.
    daemon = daemon_process(tmp_path / "data", cache_dir=str(caches),
                            model={"path": str(model), "device": "cpu", "corpus_tokens": 20100})
    daemon.start(wait=False)
    partial = daemon.wait_for(lambda: next((caches / "corpus").glob("*.partial"), None), 600,
                              "the first sampled batch of the corpus")
    assert re.fullmatch(r"sampling the corpus: \d+%", daemon.get("/status")["starting"])
    assert daemon.stop(timeout=10) == 0  # a TimeoutExpired here is a stop that hung
    kept = len(json.loads(partial.read_text())["texts"])
    assert kept >= 64 and "start-up stopped (corpus sampling was stopped)" in daemon.log_tail()
    assert "start-up: sampling the corpus, 40% done" in daemon.log_path.read_text()
    assert not list((caches / "corpus").glob("*.json"))  # the corpus is not finished

    daemon.start(wait=False)
    resumed = daemon.wait_for(
        lambda: re.search(r"resuming after (\d+) sequences", daemon.log_tail(80)), 300,
        "sampling to resume")
    assert int(resumed.group(1)) == kept
    assert daemon.stop(timeout=10) == 0
