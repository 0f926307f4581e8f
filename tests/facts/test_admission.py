"""The admission rule: which records change the desired state."""

from __future__ import annotations

import pytest

from factsync.facts.admission import Admission, HeldFact, admit
from factsync.facts.records import FactRecord

PRIORITIES = {"warehouse": 10, "wiki": 1}


def row(obj: str = "Paris", *, source: str = "wiki", deleted: bool = False) -> FactRecord:
    return FactRecord("France", "P36", obj, source, "feed:1", deleted=deleted)


@pytest.mark.parametrize(("record", "held", "expected"), [
    (row(), None, Admission.ACCEPTED),
    (row("Lyon"), HeldFact("Paris", False, "wiki"), Admission.ACCEPTED),
    (row(), HeldFact("Paris", False, "wiki"), Admission.UNCHANGED),
    (row(deleted=True), HeldFact("Paris", False, "wiki"), Admission.ACCEPTED),
    (row(), HeldFact("Paris", True, "wiki"), Admission.ACCEPTED),  # undeleted
    (row("Lyon"), HeldFact("Paris", False, "operator", reverted_from="Lyon"), Admission.HELD),
    (row("Nice"), HeldFact("Paris", False, "operator", reverted_from="Lyon"),
     Admission.ACCEPTED),
    (row("Lyon"), HeldFact("Paris", False, "warehouse"), Admission.OUTRANKED),
    (row("Lyon", source="warehouse"), HeldFact("Paris", False, "wiki"), Admission.ACCEPTED),
    (row("Lyon", source="unknown"), HeldFact("Paris", False, "wiki"), Admission.OUTRANKED),
    (row("Lyon", source="other"), HeldFact("Paris", False, "unknown"), Admission.ACCEPTED),
])
def test_a_record_is_a_new_word_unless_a_rule_says_otherwise(record, held, expected):
    assert admit(record, held, PRIORITIES) is expected
