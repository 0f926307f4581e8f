"""Validation of feed rows: every bad row gets a reason that names the field."""

from __future__ import annotations

import pytest

from factsync.facts.records import MAX_FIELD_CHARS, RowError, parse_row

GOOD = {"subject": "France", "relation": "capital", "object": "Paris"}


def parse(raw):  # noqa: ANN001, ANN201
    return parse_row(raw, source="test", location="f.jsonl:1")


def test_a_good_row_becomes_a_record_with_its_source_and_location():
    record = parse({**GOOD, "id": 7, "updated_at": "2026-01-01"})
    assert (record.subject, record.relation, record.object) == ("France", "capital", "Paris")
    assert (record.source, record.location, record.record_id) == ("test", "f.jsonl:1", "7")
    assert not record.deleted


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ([1, 2], "expected an object .* got list"),
        (None, "got null"),
        ({"relation": "capital", "object": "Paris"}, "missing field 'subject'"),
        ({**GOOD, "object": None}, "missing field 'object'"),
        ({**GOOD, "subject": 3}, "field 'subject' must be a string, got int"),
        ({**GOOD, "subject": "   "}, "field 'subject' is empty"),
        ({**GOOD, "object": "x" * (MAX_FIELD_CHARS + 1)}, "more than 500"),
        ({**GOOD, "subject": "Fra\x00nce"}, "control or invisible"),
        ({**GOOD, "subject": "Fra\u200bnce"}, "control or invisible"),
        ({**GOOD, "colour": "red"}, "unknown field.* colour"),
        ({**GOOD, "deleted": "maybe"}, "'deleted' must be true or false"),
        ({**GOOD, "id": {"a": 1}}, "'id' must be a string or number"),
        ({**GOOD, "id": True}, "'id' must be a string or number"),
    ],
)
def test_bad_rows_are_refused_with_a_reason_naming_the_field(raw, reason):
    with pytest.raises(RowError, match=reason):
        parse(raw)


def test_a_deletion_needs_no_object_and_csv_style_flags_are_read():
    record = parse({"subject": "France", "relation": "capital", "deleted": "true"})
    assert record.deleted and record.object == ""
    assert not parse({**GOOD, "deleted": "false"}).deleted


def test_text_is_normalised_to_nfc_and_trimmed():
    record = parse({**GOOD, "subject": " Cafe\u0301 "})
    assert record.subject == "Caf\u00e9"
