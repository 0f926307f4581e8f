"""Context prefixes: sampled from the model, kept on disk once per model."""

from __future__ import annotations

import json
import logging

from factsync.editing.contexts import OPENINGS, contexts_for, sample_contexts


def test_prefixes_start_bare_and_end_a_sentence(tiny_loaded):
    contexts = sample_contexts(tiny_loaded("llama"))
    assert contexts[0] == "" and len(contexts) == len(OPENINGS) + 1
    assert all(c.endswith(". ") and "{" not in c and "}" not in c for c in contexts[1:])


def test_the_cache_samples_once_per_model_and_resamples_what_it_cannot_use(
        tiny_loaded, tmp_path, caplog):
    loaded = tiny_loaded("llama")
    caplog.set_level(logging.WARNING, logger="factsync.editing.contexts")
    sampled = contexts_for(loaded, tmp_path)
    assert sampled == sample_contexts(loaded)
    (path,) = (tmp_path / loaded.fingerprint).glob("contexts-*.json")

    stored = json.loads(path.read_text())
    stored["contexts"] = [""] + [f"Stored prefix {i}. " for i in range(len(OPENINGS))]
    path.write_text(json.dumps(stored))
    assert contexts_for(loaded, tmp_path) == stored["contexts"]  # read, not sampled

    path.write_text(json.dumps(stored | {"openings": ["Once"]}))
    assert contexts_for(loaded, tmp_path) == sampled
    assert "were not sampled as they are now" in caplog.text
    path.write_text("{not json")
    assert contexts_for(loaded, tmp_path) == sampled
    assert "unreadable" in caplog.text
    other = tiny_loaded("gpt2")
    assert contexts_for(other, tmp_path) == sample_contexts(other)
    assert len(list(tmp_path.glob("*/contexts-*.json"))) == 2
