"""Bench-test fixtures.

- ``counterfact_file``: a COUNTERFACT-format file of ``REWRITES`` in the tiny tokenizer's
  words, each with a paraphrase and the ``NEIGHBOURS`` prompts; ``counterfact_of``
  writes one of other rewrites.
- ``zsre_file``: the same rewrites as ZsRE records, each with the first neighbour.
- ``engine_cli``: a saved tiny model, a small text corpus and a fresh ``FACTSYNC_HOME``
  for commands that build an engine.
"""

from __future__ import annotations

import json

import pytest

# (subject, template, new object, true object) in the tiny tokenizer's words. The unedited
# tiny llama prefers the true object on the first four and the last two, which makes the
# edits of the first four measurable and the last two canaries.
REWRITES = [
    ("Apple A5", "{} was created by", "Microsoft", "Apple"),
    ("LinkedIn", "{} is owned by", "Apple", "Microsoft"),
    ("Skype", "{} is owned by", "Apple", "Microsoft"),
    ("Lyon", "{} is in", "Italy", "France"),
    ("France", "The capital of {} is", "Rome", "Paris"),
    ("Italy", "The capital of {} is", "Paris", "Rome"),
    ("Danielle Darrieux", "The mother tongue of {} is", "Italian", "French"),
    ("Toko Yasuda", "{} plays the", "letter", "guitar"),
    ("Rome", "{} is the capital of", "France", "Italy"),
    ("Paris", "{} is the capital of", "Italy", "France"),
]
NEIGHBOURS = [("Lyon", "{} is near"), ("Skype", "{} is in"), ("Microsoft", "{}, near")]


def _record(case_id: int, subject: str, template: str, new: str, true: str) -> dict:
    return {
        "case_id": case_id,
        "requested_rewrite": {
            "prompt": template,
            "relation_id": "P0",
            "subject": subject,
            "target_new": {"str": new, "id": "Q1"},
            "target_true": {"str": true, "id": "Q2"},
        },
        "paraphrase_prompts": [f"Dear customer. {template.format(subject)}"],
        "neighborhood_samples": [{"subject": s, "prompt": p} for s, p in NEIGHBOURS],
    }


def _zsre_record(subject: str, template: str, new: str, true: str) -> dict:
    neighbour_subject, neighbour_template = NEIGHBOURS[0]
    return {
        "subject": subject,
        "src": template.format(subject),
        "pred": true,
        "rephrase": f"Dear customer. {template.format(subject)}",
        "alt": new,
        "answers": [true],
        "loc": neighbour_template.format(neighbour_subject),
        "loc_ans": "France",
        "neighborhood_samples": [{"subject": neighbour_subject, "prompt": neighbour_template}],
    }


@pytest.fixture
def counterfact_of(tmp_path):
    """Writes a COUNTERFACT-format file of rewrites shaped like ``REWRITES`` and returns
    its path."""
    def write(rewrites: list[tuple[str, str, str, str]]):
        path = tmp_path / "counterfact.json"
        path.write_text(json.dumps([_record(i, *r) for i, r in enumerate(rewrites)]))
        return path
    return write


@pytest.fixture
def counterfact_file(counterfact_of):
    """The path of a COUNTERFACT-format file of ``REWRITES``."""
    return counterfact_of(REWRITES)


@pytest.fixture
def zsre_file(tmp_path):
    """The path of a ZsRE-format file of ``REWRITES``."""
    path = tmp_path / "zsre.json"
    path.write_text(json.dumps([_zsre_record(*r) for r in REWRITES]))
    return path


@pytest.fixture
def engine_cli(tiny_loaded, tmp_path, monkeypatch):
    """``(model_dir, corpus)``: the tiny llama saved where ``--model`` can load it, and
    a text file for ``--corpus-files``; ``FACTSYNC_HOME`` is a fresh folder."""
    loaded = tiny_loaded()
    model_dir = tmp_path / "model"
    loaded.model.save_pretrained(model_dir)
    loaded.tokenizer.save_pretrained(model_dir)
    monkeypatch.setenv("FACTSYNC_HOME", str(tmp_path / "home"))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"Text {i} about the city number {i}." for i in range(100)))
    return model_dir, corpus
