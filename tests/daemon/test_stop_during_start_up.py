"""A daemon stopped while it samples its corpus exits cleanly, and its restart resumes."""

from __future__ import annotations

import json
import re

from factsync.editing.corpus import CPU_SAMPLING_BATCH

# Ten batches of sequences (of 128 tokens, 64 at a time on a CPU): on the tiny model each
# takes a second or so, long enough to stop the daemon between the first and the last.
CORPUS_TOKENS = 10 * CPU_SAMPLING_BATCH * 128


def test_sigterm_while_sampling_the_corpus_exits_at_once_and_the_restart_resumes(
    tmp_path, tiny_daemon
):
    caches = tmp_path / "caches"
    daemon = tiny_daemon(tmp_path / "data", corpus_tokens=CORPUS_TOKENS, cache_dir=str(caches))
    daemon.start(wait=False)
    partial = daemon.wait_for(lambda: next((caches / "corpus").glob("*.partial"), None), 600,
                              "the first sampled batch of the corpus")
    assert re.fullmatch(r"sampling the corpus: \d+%", daemon.get("/status")["starting"])
    assert daemon.stop(timeout=10) == 0  # a TimeoutExpired here is a stop that hung
    kept = len(json.loads(partial.read_text())["texts"])
    assert kept >= CPU_SAMPLING_BATCH
    assert "start-up stopped (corpus sampling was stopped)" in daemon.log_tail()
    assert re.search(r"start-up: sampling the corpus, [1-9]0% done",
                     daemon.log_path.read_text())
    assert not list((caches / "corpus").glob("*.json"))  # the corpus is not finished

    daemon.start(wait=False)
    resumed = daemon.wait_for(
        lambda: re.search(r"resuming after (\d+) sequences", daemon.log_tail(80)), 300,
        "sampling to resume")
    assert int(resumed.group(1)) == kept
    assert daemon.stop(timeout=10) == 0
