"""``factsync bench plan`` on small stores: both rows come out (timings are not checked)."""

from __future__ import annotations

import pytest

from factsync.bench.plan import build_store, format_plan_table, run_plan_bench


def test_a_built_store_holds_the_applied_facts_with_shared_objects(tmp_path):
    bench = build_store(tmp_path / "state.sqlite", 300)
    try:
        applied = bench.store.applied_facts()
        assert len(applied) == 300 and len({f.relation for f in applied}) > 10
        assert len({(f.relation, f.object) for f in applied}) < 300  # objects are shared
    finally:
        bench.store.close()


@pytest.mark.parametrize("with_model", [False, True])
def test_the_bench_times_every_size_and_prints_a_row_for_each(tiny_loaded, tmp_path,
                                                            with_model):
    loaded = tiny_loaded() if with_model else None
    rows = run_plan_bench([10, 1000], repeats=2, loaded=loaded, directory=tmp_path)
    assert [row.applied for row in rows] == [10, 1000]
    assert all(len(row.plan_ms) == len(row.prepare_ms) == 2 for row in rows)
    table = format_plan_table(rows, model="tiny" if with_model else "none")
    assert [line.split(" | ")[0] for line in table.splitlines()[3:]] == [
        "10", "1000", "ratio 1000/10"]
    assert list(tmp_path.iterdir()) == []  # the stores are removed
