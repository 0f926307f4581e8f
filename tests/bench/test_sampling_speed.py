"""``factsync bench sampling`` on a tiny model: every batch size samples the same texts."""

from __future__ import annotations

from factsync.bench.sampling_speed import BatchTiming, format_timings, time_batch_sizes
from factsync.cli import main
from factsync.editing.corpus import sampling_bytes_per_sequence


def test_every_batch_size_samples_the_same_texts(tiny_loaded):
    loaded = tiny_loaded("llama")
    timings = time_batch_sizes(loaded, [1, 2, 5], sequences=3, sequence_length=6)
    per_sequence = sampling_bytes_per_sequence(loaded, 6)
    assert [t.batch_size for t in timings] == [1, 2, 5]
    assert [t.cache_bytes for t in timings] == [per_sequence, 2 * per_sequence,
                                                3 * per_sequence]  # 3 sequences in all
    assert all(t.same_texts for t in timings)
    assert all(t.tokens_per_second > 0 for t in timings)


def test_the_table_compares_with_the_first_size_and_flags_other_texts():
    table = format_timings([BatchTiming(16, 50.0, 2**20, True),
                            BatchTiming(64, 125.0, 4 * 2**20, False)]).splitlines()
    assert [cell.strip() for cell in table[2].split("|")] == ["16", "50.0", "1.00x", "1 MiB",
                                                              "yes"]
    assert [cell.strip() for cell in table[3].split("|")] == ["64", "125.0", "2.50x", "4 MiB",
                                                              "NO"]


def test_the_command_prints_one_row_per_batch_size(tiny_model_dir, capsys):
    assert main(["bench", "sampling", "--model", str(tiny_model_dir), "--batch-sizes", "1,3",
                 "--sequences", "3", "--sequence-length", "4"]) == 0
    rows = capsys.readouterr().out.splitlines()[3:]
    assert [row.split("|")[0].strip() for row in rows] == ["1", "3"]
    assert all(row.split("|")[4].strip() == "yes" for row in rows)


def test_the_command_refuses_an_empty_sample(tiny_model_dir):
    assert main(["bench", "sampling", "--model", str(tiny_model_dir), "--sequences", "0"]) != 0
