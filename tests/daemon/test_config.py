"""Daemon configuration: defaults, validation errors naming the key, overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from factsync.daemon.config import TOKEN_ENV, load_config
from factsync.editing.corpus import SAMPLING_TOP_K
from factsync.typed_yaml import SchemaError


def write(tmp_path, document) -> Path:  # noqa: ANN001
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def test_without_a_file_the_embedded_default_is_used(monkeypatch, tmp_path):
    monkeypatch.setenv("FACTSYNC_HOME", str(tmp_path))
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    config = load_config(None)
    assert config.state_dir == tmp_path
    assert (config.api.host, config.api.port) == ("127.0.0.1", 8080)
    assert (config.metrics.host, config.metrics.port) == ("127.0.0.1", 9108)
    assert config.model.path == "default" and config.policy is None
    assert config.under_data_dir(config.connectors[0].path) == tmp_path / "facts"


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"modle": {}}, r"config: unknown key\(s\) modle"),
        ({"api": {"port": "80"}}, r"config.api.port: expected int, got str"),
        ({"api": {"port": 70000}}, r"config.api: port must be in 0..65535"),
        ({"model": {"dtype": "int8"}}, r"config.model: dtype must be"),
        ({"model": {"path": "/no/such/model"}}, r"config.model: path '/no/such/model' is not"),
        ({"connectors": [{"type": "kafka"}]},
         r"config.connectors\[0\].type must be one of file, sql, http, got 'kafka'"),
        ({"connectors": [{}, {}]}, r"source names must differ"),
        ({"connectors": [{"type": "sql", "table": "kb"}]}, r"a sql connector needs url"),
        ({"connectors": [{"type": "sql", "url": "sqlite://"}]}, r"exactly one of table and query"),
        ({"connectors": [{"type": "file", "table": "kb"}]}, r"are for sql connectors"),
        ({"connectors": [{"type": "http", "url": "http://x", "poll_seconds": 0}]},
         r"poll_seconds must be positive"),
        ({"schedules": {"full_scan_seconds": 0}}, r"full_scan_seconds must be positive"),
        ({"relations": {"P1": {"paraphrases": []}}}, r"config.relations.P1: .*template"),
        ({"policy": "missing.yaml"}, r"config.policy: no such file"),
        ({"api": {"host": "0.0.0.0"}}, r"config.api.host: binding '0.0.0.0' exposes the API"),
        ({"export": {"max_rank": 48}},
         r"config.export: max_rank must be a LoRA rank vLLM serves \(8, 16, 32, 64, 128, 256, "
         r"320, 512\), got 48"),
        ({"export": {"sglang_url": "sglang:30000"}},
         r"config.export: sglang_url must be an http\(s\) URL"),
        ({"export": {"adapter": False, "sglang_url": "http://s:30000"}},
         r"config.export: sglang_url needs adapter: true"),
    ],
)
def test_a_wrong_value_stops_loading_with_its_key(tmp_path, monkeypatch, document, message):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with pytest.raises(SchemaError, match=message):
        load_config(write(tmp_path, document))


def test_the_policy_path_is_relative_to_the_config_and_the_token_comes_from_the_environment(
    tmp_path, monkeypatch
):
    (tmp_path / "strict.yaml").write_text("name: strict\n")
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    config = load_config(write(tmp_path, {"policy": "strict.yaml", "api": {"token": "file"}}))
    assert config.policy == tmp_path / "strict.yaml"
    assert config.api.token == "from-env"


def test_corpus_files_are_relative_to_the_config_and_feed_the_key_statistics(tmp_path):
    (tmp_path / "domain.txt").write_text("A paragraph of the operator's own text.\n")
    (tmp_path / "more.jsonl").write_text('{"text": "Another."}\n')
    config = load_config(write(tmp_path, {"model": {"corpus_files": [
        "domain.txt", str(tmp_path / "more.jsonl")]}}))
    expected = (tmp_path / "domain.txt", tmp_path / "more.jsonl")
    assert config.model.corpus_files == expected
    assert config.model.statistics().text_files == expected
    assert load_config(None).model.statistics().text_files == ()


def test_corpus_top_k_reaches_the_key_statistics_and_is_checked(tmp_path):
    assert load_config(None).model.statistics().corpus_top_k == SAMPLING_TOP_K
    config = load_config(write(tmp_path, {"model": {"corpus_top_k": 50}}))
    assert config.model.statistics().corpus_top_k == 50
    with pytest.raises(SchemaError, match="corpus_top_k must not be negative"):
        load_config(write(tmp_path, {"model": {"corpus_top_k": -1}}))


def test_a_sampled_share_mixes_the_corpus_files_with_samples_and_is_checked(tmp_path):
    (tmp_path / "domain.txt").write_text("A paragraph of the operator's own text.\n")
    assert load_config(None).model.statistics().corpus_sampled_share == 0.0
    config = load_config(write(tmp_path, {"model": {"corpus_files": ["domain.txt"],
                                                    "corpus_sampled_share": 0.5}}))
    assert config.model.statistics().corpus_sampled_share == 0.5
    assert config.model.statistics().source() == (
        f"{tmp_path}/domain.txt with 50% model-sampled text")
    with pytest.raises(SchemaError, match="corpus_sampled_share mixes model-sampled text with "
                       "corpus files; name the files too"):
        load_config(write(tmp_path, {"model": {"corpus_sampled_share": 0.5}}))
    with pytest.raises(SchemaError, match="corpus_sampled_share must be at least 0 and below 1"):
        load_config(write(tmp_path, {"model": {"corpus_files": ["domain.txt"],
                                               "corpus_sampled_share": 1}}))


def test_a_missing_corpus_file_stops_loading_with_its_key(tmp_path):
    (tmp_path / "domain.txt").write_text("text\n")
    with pytest.raises(SchemaError, match=r"config.model.corpus_files\[1\]: no such file "
                       f"{tmp_path}/missing.txt"):
        load_config(write(tmp_path, {"model": {"corpus_files": ["domain.txt", "missing.txt"]}}))
