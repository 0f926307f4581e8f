"""A 100,000-row fact file with 10% bad rows, read by the file connector into a real store.

Every bad row must be quarantined at its own line with the reason that fits it, and
every good row must reach the store.
"""

from __future__ import annotations

import json

import pytest

from factsync.connectors.files import FileConnector

pytestmark = pytest.mark.reliability

ROWS = 100_000
BLOCK = 20  # 18 good rows, then a pair of bad ones: 10% bad
RELATIONS = ("P36", "P17", "P27", "P103")


def _good(number: int) -> str:
    return json.dumps({"id": f"row-{number}", "subject": f"Subject {number}",
                       "relation": RELATIONS[number % len(RELATIONS)],
                       "object": f"Object {number % 97}"})


# Each kind makes the two bad rows of a block: their text, and the reason each must get.
def _pair(block: int) -> tuple[list[str], list[str]]:
    subject = f"Bad subject {block}"
    row = {"subject": subject, "relation": "P36", "object": "Paris"}
    kinds = [
        ([{"subject": subject, "relation": "P36"}] * 2, ["missing field 'object'"] * 2),
        # null counts as missing, as an empty YAML key does
        ([{**row, "object": 7}, {**row, "subject": None}],
         ["field 'object' must be a string, got int", "missing field 'subject'"]),
        ([{**row, "object": ""}, {**row, "object": "x" * 600}],
         ["field 'object' is empty", "field 'object' is 600 characters, more than 500"]),
        ([{**row, "subject": subject + "\x07"}, {**row, "object": "Par\u200bis"}],
         ["field 'subject' holds control or invisible characters",
          "field 'object' holds control or invisible characters"]),
        ([{**row, "relation": "P9999"}, {**row, "colour": "red"}],
         ["unknown relation 'P9999'", "unknown field(s) colour"]),
        (["{\"subject\": ", ["a", "list"]],
         ["not valid JSON", "expected an object with subject, relation, object; got list"]),
        ([{**row, "id": f"dup-{block}"}, {**row, "id": f"dup-{block}", "object": "Rome"}],
         [f"id 'dup-{block}' names a different fact at"] * 2),
    ]
    values, reasons = kinds[block % len(kinds)]
    return [v if isinstance(v, str) else json.dumps(v) for v in values], reasons


def test_a_100k_row_file_with_10_percent_bad_rows(tmp_path, store, ingest):
    lines, expected = [], {}
    for block in range(ROWS // BLOCK):
        lines += [_good(block * BLOCK + i) for i in range(BLOCK - 2)]
        bad, reasons = _pair(block)
        for text, reason in zip(bad, reasons, strict=True):
            lines.append(text)
            expected[f"feed.jsonl:{len(lines)}"] = reason
    facts = tmp_path / "facts"
    facts.mkdir()
    (facts / "feed.jsonl").write_text("\n".join(lines) + "\n")

    report = FileConnector(name="file:facts", directory=facts, sink=ingest).scan()

    assert (report.rows, report.rejected, report.errors) == (ROWS, ROWS // 10, [])
    quarantined = store.quarantined(limit=ROWS)
    assert len(quarantined) == len(expected) == ROWS // 10
    wrong = [(q.location, q.reason) for q in quarantined
             if not q.reason.startswith(expected[q.location])]
    assert wrong == []
    assert len(store.desired_facts()) == ROWS - ROWS // 10
    assert store.count_changes(states=("pending",)) == ROWS - ROWS // 10
