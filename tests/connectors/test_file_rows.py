"""Reading fact files: every row with its line, unreadable rows with a reason."""

from __future__ import annotations

import pytest

from factsync.connectors.file_rows import read_rows


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("a.jsonl", '{"subject": "A"}\n\n{bad\n',
         [(1, {"subject": "A"}, None), (3, None, "not valid JSON")]),
        ("a.csv", "subject,relation,object\nA,P36,B\n\nC,P36\nD,P36,E,F\n",
         [(2, {"subject": "A", "relation": "P36", "object": "B"}, None),
          (4, {"subject": "C", "relation": "P36"}, None),
          (5, None, "more cells than the 3 headers")]),
        ("a.yaml", "- {subject: A}\n- subject: B\n  object: C\n",
         [(1, {"subject": "A"}, None), (2, {"subject": "B", "object": "C"}, None)]),
        ("b.yml", "facts:\n  - {subject: A}\n", [(2, {"subject": "A"}, None)]),
        ("c.yaml", "subject: A\n", [(1, None, "expected a list of facts")]),
        ("d.yaml", "- [unclosed\n", [(2, None, "not valid YAML")]),
    ],
)
def test_rows_come_with_their_line_numbers(tmp_path, name, text, expected):
    path = tmp_path / name
    path.write_text(text)
    rows = list(read_rows(path))
    assert [(line, raw) for line, raw, _ in rows] == [(line, raw) for line, raw, _ in expected]
    for (_, _, problem), (_, _, wanted) in zip(rows, expected, strict=True):
        assert (problem is None) == (wanted is None)
        if wanted:
            assert wanted in problem


def test_a_file_that_is_not_utf8_is_one_bad_row(tmp_path):
    path = tmp_path / "latin.jsonl"
    path.write_bytes(b'{"subject": "Caf\xe9"}\n')
    assert [(line, problem.split(":")[0]) for line, _, problem in read_rows(path)] == [
        (1, "file is not UTF-8 text")
    ]
