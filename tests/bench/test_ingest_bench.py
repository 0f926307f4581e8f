"""``factsync bench ingest`` on a real store: both batch sizes take the same rows."""

from __future__ import annotations

from factsync.bench.ingest import BAD_EVERY, format_ingest_table, make_rows, run_ingest_bench


def test_every_batch_size_records_the_good_rows_and_quarantines_the_bad(tmp_path):
    rows = run_ingest_bench(120, [1, 50], repeats=2, directory=tmp_path)
    for row in rows:
        assert (row.delivered, row.changes, row.quarantined) == (120, 108, 12)
        assert len(row.seconds) == 2 and row.rows_per_second > 0
    table = format_ingest_table(120, rows)
    assert table.splitlines()[3].startswith("1 | ") and table.endswith("x")
    assert list(tmp_path.iterdir()) == []  # scratch stores removed


def test_the_bad_rows_are_of_both_kinds():
    bad = [raw for raw, _, _ in make_rows(4 * BAD_EVERY) if raw.get("relation") != "P36"
           or "object" not in raw]
    assert len(bad) == 4
    assert {"object" in raw for raw in bad} == {True, False}
