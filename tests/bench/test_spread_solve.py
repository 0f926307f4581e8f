"""``bench solve``: the cached-factor spread solve against a fresh solve."""

from __future__ import annotations

import pytest

from factsync.bench.spread_solve import format_solve_table, time_solves
from factsync.cli import main


def test_the_cached_factor_gives_the_delta_of_a_fresh_solve() -> None:
    timing = time_solves(384, 12)

    assert timing.max_relative_difference < 1e-6
    assert min(timing.fresh_seconds, timing.factorise_seconds, timing.woodbury_seconds) > 0
    former, cached = timing.job_seconds(3)
    assert former == pytest.approx(3 * timing.fresh_seconds)
    assert cached == pytest.approx(timing.factorise_seconds + 3 * timing.woodbury_seconds)


def test_the_table_has_a_row_per_case() -> None:
    table = format_solve_table([time_solves(64, 4), time_solves(96, 8)], passes=2, layers=5)

    rows = table.splitlines()[2:]
    assert [row.split(" | ")[:2] for row in rows] == [["64", "4"], ["96", "8"]]


def test_the_command_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "solve", "--key-sizes", "128", "--keys", "4", "--passes", "2"]) == 0

    out = capsys.readouterr().out
    assert "job of 2 passes x 5 layers" in out
    assert "\n128 | 4 | " in out


@pytest.mark.parametrize("option", ["--key-sizes", "--keys"])
@pytest.mark.parametrize("value", ["0", "ten", ""])
def test_bad_sizes_are_named(option: str, value: str,
                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "solve", option, value]) == 1
    assert f"ERROR factsync: {option} must" in capsys.readouterr().err
