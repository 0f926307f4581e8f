"""``factsync bench share`` on a tiny model: three rounds, the threads each process took."""

from __future__ import annotations

import os

from factsync.cli import main


def test_processes_side_by_side_report_their_threads_and_speed(tiny_model_dir, capsys):
    assert main(["bench", "share", "--processes", "2", "--tokens", "32",
                 "--model", str(tiny_model_dir)]) == 0
    rows = [line.split("|") for line in capsys.readouterr().out.splitlines()[2:]]
    cores = os.cpu_count() or 1
    assert [(r[0].strip(), int(r[1]), r[2].strip()) for r in rows] == [
        ("alone", 1, f"{cores}"),
        ("torch defaults", 2, f"{cores}, {cores}"),
        ("shared", 2, f"{cores}, {max(1, cores // 2)}"),
    ]
    for row in rows:
        assert all(float(rate) > 0 for rate in row[3].split(","))
