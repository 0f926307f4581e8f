"""A subject a feed row carries is either found among its prompt's tokens or refused.

The editor locates the subject by character offsets, so a subject whose tokens merge
with the template around it ("{}'s", "{}ian"), or that byte-level BPE splits inside a
character, still maps to the span of tokens that spells it. A subject the tokenizer
cannot spell at all (bytes missing from its vocabulary) is refused with the reason
before any job takes it. Checked on the real default tokenizer with hypothesis.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from factsync.facts.records import RowError, parse_row
from factsync.jobs.preparation import unrepresentable
from factsync.models.loading import load_model
from factsync.models.text import PromptSpec, encode, read_back
from factsync.store.records import FactChange

pytestmark = pytest.mark.real_model

TEMPLATES = ["The capital of {} is", "{}'s capital is", "{}ian food is", "{} is owned by",
             "In {}, people speak"]


@pytest.fixture(scope="module")
def default_model():
    return load_model("default", device="cpu")


def change(subject: str, obj: str = "Paris") -> FactChange:
    return FactChange(id=1, subject=subject, relation="P36", object=obj, deleted=False,
                      source="t", received_at=0.0, state="pending", reason="", job_id=None,
                      old_object=None, changed_at=0.0)


@given(subject=st.text(min_size=1, max_size=24), template=st.sampled_from(TEMPLATES))
@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_a_subject_is_spelled_by_its_token_span_or_refused(default_model, subject, template):
    try:
        record = parse_row({"subject": subject, "relation": "P36", "object": "Paris"},
                           source="t", location="x")
    except RowError:
        assume(False)
    if unrepresentable(default_model, change(record.subject)) is not None:
        assert read_back(default_model, record.subject) != record.subject
        return
    batch = encode(default_model, [PromptSpec(template, record.subject)])
    first, last = int(batch.subject_first[0]), int(batch.subject_last[0])
    assert first <= last <= int(batch.prompt_last[0])
    spelled = default_model.tokenizer.decode(batch.input_ids[0, first : last + 1])
    assert record.subject in spelled


def test_characters_split_across_tokens_end_on_their_last_token(default_model):
    for subject in ("¡", "日本", "Zürich", "😀"):
        batch = encode(default_model, [PromptSpec("The capital of {} is", subject)])
        first, last = int(batch.subject_first[0]), int(batch.subject_last[0])
        assert default_model.tokenizer.decode(batch.input_ids[0, first : last + 1]).strip() \
            == subject


def test_a_subject_or_object_the_tokenizer_drops_bytes_of_is_refused_by_name(default_model):
    assert unrepresentable(default_model, change("Zürich", "日本")) is None
    unassigned = "\U00040000"  # one of its UTF-8 bytes is missing from the vocabulary
    reason = unrepresentable(default_model, change(unassigned))
    assert reason.startswith(f"the model's tokenizer cannot represent the subject {unassigned!r}")
    assert "object" in unrepresentable(default_model, change("Paris", "\U00040000"))
