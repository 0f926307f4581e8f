"""``bench statistics-fit`` scores key statistics against a text's own keys (tiny model)."""

from __future__ import annotations

import json

import pytest
import torch

from factsync.bench.statistics_fit import (
    AS_SAMPLED,
    Shrinkage,
    edit_excess,
    format_excess,
    format_fit,
    statistics_fit,
)
from factsync.cli import main
from factsync.editing.covariance import ShrinkageTarget, compute_key_statistics, token_count

CORPUS = [
    "The capital of France is Paris and the capital of Italy is Rome.",
    "LinkedIn is owned by Microsoft, and so is Skype.",
    "Once upon a time, in 1998, scientists found a new city in the north.",
    "Dear customer, your parcel left our warehouse in Lyon this morning.",
] * 12
TEXTS = ["Danielle Darrieux was a French actress whose mother tongue is French.",
         "Q: What is the tallest mountain in Europe? A: Mont Blanc, on the Italian border.",
         "def main(): print('hello')"]
LAYERS = [1, 2]
SHRINKAGES = [Shrinkage(ShrinkageTarget.ISOTROPIC, 0.25), Shrinkage(ShrinkageTarget.DIAGONAL, 0.5)]


def test_the_fit_is_the_gaussian_cost_of_the_texts_second_moment(tiny_loaded):
    loaded = tiny_loaded("llama")
    statistics = compute_key_statistics(loaded, LAYERS, CORPUS,
                                        token_budget=token_count(loaded, CORPUS), progress=False)
    texts = compute_key_statistics(loaded, LAYERS, TEXTS,
                                   token_budget=token_count(loaded, TEXTS), progress=False)
    fit = statistics_fit(loaded, statistics, TEXTS, SHRINKAGES, batch_size=2)
    for layer in LAYERS:  # the same keys, batched differently: float32 rounding apart
        assert fit.texts[layer].count == texts[layer].count
        torch.testing.assert_close(fit.texts[layer].second_moment,
                                   texts[layer].second_moment.double(), rtol=1e-4, atol=1e-6)
    rows = fit.rows
    assert [(row.layer, row.shrinkage) for row in rows] == [
        (layer, candidate) for layer in LAYERS for candidate in [AS_SAMPLED, *SHRINKAGES]]
    for row in rows:
        shrunk = statistics[row.layer].shrunk(row.shrinkage.weight, row.shrinkage.target)
        moment, size = texts[row.layer].second_moment, shrunk.key_size
        mahalanobis = shrunk.mahalanobis_per_dimension(moment)
        log_det = 2 * float(shrunk.cholesky_factor().diagonal().log().sum()) / size
        assert row.mahalanobis == pytest.approx(mahalanobis, rel=1e-6)
        assert row.fit.mean == pytest.approx(0.5 * (mahalanobis + log_det), rel=1e-6)
        assert row.fit.low <= row.fit.mean <= row.fit.high
    sampled = {row.layer: row.fit.mean for row in rows if row.shrinkage == AS_SAMPLED}
    for row in rows:
        assert row.against_sampled.mean == pytest.approx(row.fit.mean - sampled[row.layer],
                                                         abs=1e-9)
    table = format_fit(rows)
    assert table.count(" * ") + table.count(" *|") == len(LAYERS)


def test_statistics_of_the_texts_themselves_fit_them_best_unshrunk(tiny_loaded):
    # The Gaussian cost tr(C^-1 T) + log det C is lowest at C = T: shrinking only adds.
    loaded = tiny_loaded("llama")
    own = compute_key_statistics(loaded, LAYERS, TEXTS, token_budget=token_count(loaded, TEXTS),
                                 progress=False)
    full_rank = {layer: stats for layer, stats in own.items()
                 if torch.linalg.matrix_rank(stats.second_moment) == stats.key_size}
    assert full_rank, "the texts give too few keys for a full-rank second moment"
    rows = statistics_fit(loaded, full_rank, TEXTS, SHRINKAGES).rows
    for row in rows:
        if row.shrinkage != AS_SAMPLED:
            assert row.against_sampled.mean > 0


def test_an_edit_built_on_the_texts_own_statistics_harms_them_least(tiny_loaded):
    loaded = tiny_loaded("llama")
    # Ten keys per dimension at least, so T stands for the text; C from other text.
    many = [f"Text {i} tells of the city number {i} and its {i % 7} rivers." for i in range(120)]
    texts = compute_key_statistics(loaded, LAYERS, many, token_budget=token_count(loaded, many),
                                   progress=False)
    other = compute_key_statistics(loaded, LAYERS, CORPUS,
                                   token_budget=token_count(loaded, CORPUS), progress=False)
    generator = torch.Generator().manual_seed(0)
    keys = {layer: texts[layer].sample[torch.randperm(len(texts[layer].sample),
                                                      generator=generator)[:20]]
            for layer in LAYERS}
    own = edit_excess(texts, texts, keys, SHRINKAGES)
    for row in own:
        if row.shrinkage == AS_SAMPLED:
            assert row.excess.mean == pytest.approx(1.0, abs=1e-6)
        else:  # Cauchy-Schwarz: any other C is worse for the text it did not come from
            assert row.excess.mean > 1.0 and row.against_sampled.mean > 1.0
    rows = edit_excess(other, texts, keys, SHRINKAGES)
    for row in rows:
        shrunk = other[row.layer].shrunk(row.shrinkage.weight, row.shrinkage.target)
        k = keys[row.layer].double().T
        u = torch.linalg.solve(shrunk.second_moment.double(), k)
        t = texts[row.layer].second_moment.double()
        ratio = ((u * (t @ u)).sum(0) * (k * torch.linalg.solve(t, k)).sum(0)
                 / (k * u).sum(0) ** 2)
        assert row.excess.mean == pytest.approx(float(ratio.log().mean().exp()), rel=1e-4)
        assert row.excess.low <= row.excess.mean <= row.excess.high
    assert format_excess(rows).count(" * ") == len(LAYERS)
    with pytest.raises(ValueError, match="pricing edits needs 640"):
        few = compute_key_statistics(loaded, LAYERS, TEXTS,
                                     token_budget=token_count(loaded, TEXTS), progress=False)
        edit_excess(other, few, keys, SHRINKAGES)


def test_the_command_prints_the_table_and_writes_json(tiny_loaded, tmp_path, monkeypatch,
                                                      capsys, counterfact_file):
    loaded = tiny_loaded("llama")
    model_dir = tmp_path / "model"
    loaded.model.save_pretrained(model_dir)
    loaded.tokenizer.save_pretrained(model_dir)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(CORPUS))
    fluency = tmp_path / "fluency.json"
    fluency.write_text(json.dumps([{"Text": text} for text in TEXTS]))
    monkeypatch.setenv("FACTSYNC_HOME", str(tmp_path / "home"))
    report = tmp_path / "fit.json"
    code = main(["bench", "statistics-fit", "--fluency", str(fluency), "--layers", "1,2",
                 "--shrinkage", "0.1", "--targets", "diagonal", "--model", str(model_dir),
                 "--device", "cpu", "--corpus-files", str(corpus), "--corpus-tokens", "1000",
                 "--json", str(report)])
    assert code == 0
    printed = capsys.readouterr().out
    assert f"key statistics over 1000 tokens of {corpus}" in printed
    data = json.loads(report.read_text())
    assert [(row["layer"], row["target"], row["weight"]) for row in data["rows"]] == [
        (1, "isotropic", 0.0), (1, "diagonal", 0.1), (2, "isotropic", 0.0), (2, "diagonal", 0.1)]
    for row in data["rows"]:
        assert f"{row['fit'][0]:.4f} [{row['fit'][1]:.4f}, {row['fit'][2]:.4f}]" in printed
    assert "excess" not in data
    code = main(["bench", "statistics-fit", "--fluency", str(fluency), "--layers", "1,2",
                 "--targets", "diagonal", "--model", str(model_dir), "--corpus-files",
                 str(corpus), "--corpus-sampled-share", "0.5", "--corpus-tokens", "1000",
                 "--json", str(report)])
    assert code == 0
    assert f"1000 tokens of {corpus} with 50% model-sampled text" in capsys.readouterr().out
    assert json.loads(report.read_text())["corpus"] == f"{corpus} with 50% model-sampled text"

    many = tmp_path / "many.json"
    many.write_text(json.dumps([{"Text": f"Text {i} tells of the city number {i}."}
                                for i in range(150)]))
    code = main(["bench", "statistics-fit", "--fluency", str(many), "--layers", "1,2",
                 "--shrinkage", "0.1", "--targets", "diagonal", "--model", str(model_dir),
                 "--corpus-files", str(corpus), "--corpus-tokens", "1000",
                 "--data", str(counterfact_file), "--n", "3", "--json", str(report)])
    assert code == 0
    printed = capsys.readouterr().out
    data = json.loads(report.read_text())
    assert data["edit_records"] == 3
    assert "excess harm of the edits of 3 counterfact records' subjects" in printed
    assert [(row["layer"], row["weight"]) for row in data["excess"]] == [
        (1, 0.0), (1, 0.1), (2, 0.0), (2, 0.1)]
    for row in data["excess"]:
        assert row["excess"][0] >= 1.0 - 1e-9
        assert f"{row['excess'][0]:.3f} [{row['excess'][1]:.3f}, {row['excess'][2]:.3f}]" \
            in printed
    for option, value, message in [
            ("--n", "3", "pricing edits needs 640"),
            ("--n", "-1", "--n must not be negative, got -1"),
            ("--shrinkage", "1.5", "--shrinkage weights must be in (0, 1), got [1.5]"),
            ("--targets", "identity", "--targets must be one of isotropic, diagonal")]:
        assert main(["bench", "statistics-fit", "--fluency", str(fluency), option, value,
                     "--model", str(model_dir), "--layers", "1,2", "--corpus-files",
                     str(corpus), "--corpus-tokens", "1000",
                     "--data", str(counterfact_file)]) != 0
        assert message in capsys.readouterr().err
