"""The statistics corpus: model-sampled text, user files, its digest and its cache."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from factsync.editing import corpus
from factsync.editing.build import StatisticsSettings, statistics_corpus
from factsync.editing.cancellation import WorkCancelled
from factsync.editing.corpus import (
    OPENINGS,
    SHIPPED_CORPORA,
    CorpusError,
    batch_for_memory,
    corpus_digest,
    load_text_files,
    mix_texts,
    model_corpus,
    sample_corpus,
    sampling_batch_size,
)
from factsync.editing.covariance import token_count
from factsync.models.loading import model_fingerprint

LOGGER = "factsync.editing.corpus"


def sample(loaded, **kwargs) -> list[str]:
    """A small corpus with test defaults: 60 tokens in sequences of 12, no bar."""
    options = {"num_tokens": 60, "sequence_length": 12, "batch_size": 2, "progress": False}
    return sample_corpus(loaded, **{**options, **kwargs})


# --- corpus_digest ------------------------------------------------------------------


def test_digest_is_a_stable_hex_prefix_sensitive_to_order_and_boundaries():
    digest = corpus_digest(["a", "b"])
    assert len(digest) == 16 and int(digest, 16) >= 0
    assert corpus_digest(["a", "b"]) == digest
    assert corpus_digest(("a", "b")) == digest
    assert corpus_digest(["b", "a"]) != digest
    assert corpus_digest(["ab", "c"]) != corpus_digest(["a", "bc"])
    assert corpus_digest([""]) != corpus_digest([])


# --- sample_corpus ------------------------------------------------------------------


def test_sampling_is_deterministic_per_seed_and_starts_at_an_opening(tiny_loaded, tiny_family):
    loaded = tiny_loaded(tiny_family)
    texts = sample(loaded, seed=5)
    assert len(texts) == math.ceil(60 / 12)
    assert sample(loaded, seed=5) == texts
    assert sample(loaded, seed=6) != texts
    # Decoded without the prefix token: every text begins with its opening.
    for text in texts:
        assert any(text.startswith(opening) for opening in OPENINGS), text
        assert "<|endoftext|>" not in text and "<pad>" not in text


def test_sampling_does_not_depend_on_the_batch_size(tiny_loaded, tiny_family):
    # Rows of a batch have openings of different lengths, so this also checks that
    # left padding with explicit positions samples as an unpadded row would.
    loaded = tiny_loaded(tiny_family)
    assert sample(loaded, batch_size=1) == sample(loaded, batch_size=5)


def test_a_gpu_samples_as_many_sequences_as_its_memory_holds(tiny_loaded, tiny_family):
    loaded = tiny_loaded(tiny_family)
    config = loaded.model.config
    head_dim = config.hidden_size // config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    per_sequence = (2 * loaded.num_layers * kv * head_dim * 4 * (32 + corpus.OPENING_TOKENS)
                    + config.vocab_size * 4)
    assert batch_for_memory(loaded, 32, 100 * per_sequence) == 100
    assert batch_for_memory(loaded, 32, 100 * per_sequence - 1) == 99
    assert batch_for_memory(loaded, 32, 0) == corpus.MIN_SAMPLING_BATCH
    assert batch_for_memory(loaded, 32, 10**15) == corpus.MAX_SAMPLING_BATCH
    assert sampling_batch_size(loaded, 32) == corpus.CPU_SAMPLING_BATCH  # on the CPU


def test_sampling_counts_tokens_per_sequence(tiny_loaded):
    loaded = tiny_loaded("llama")
    assert len(sample(loaded, num_tokens=61, sequence_length=12)) == 6
    assert len(sample(loaded, num_tokens=1, sequence_length=12)) == 1


def test_sampling_leaves_the_model_unchanged_and_hook_free(tiny_loaded):
    loaded = tiny_loaded("gpt_neox")
    before = model_fingerprint(loaded.model)
    sample(loaded)
    assert model_fingerprint(loaded.model) == before
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in loaded.model.modules())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_tokens": 0}, "num_tokens must be positive, got 0"),
        ({"sequence_length": -1}, "sequence_length must be positive, got -1"),
        ({"batch_size": 0}, "batch_size must be positive, got 0"),
    ],
)
def test_bad_sampling_arguments_are_named(tiny_loaded, kwargs, match):
    with pytest.raises(ValueError, match=match):
        sample(tiny_loaded("llama"), **kwargs)


# --- model_corpus (the cache) -------------------------------------------------------


def cached(loaded, cache_dir, **kwargs) -> list[str]:
    options = {"num_tokens": 36, "seed": 1, "sequence_length": 12, "progress": False}
    return model_corpus(loaded, cache_dir=cache_dir, **{**options, **kwargs})


def test_model_corpus_is_sampled_once_then_read_from_disk(tiny_loaded, tmp_path, caplog):
    loaded = tiny_loaded("llama")
    caplog.set_level(logging.INFO, logger=LOGGER)
    first = cached(loaded, tmp_path)
    assert any("sampling a corpus of 36 tokens" in r.getMessage() for r in caplog.records)
    path = tmp_path / f"{loaded.fingerprint}-36-1-len12-full.json"
    # no temporary file left behind; the lock file stays (removing it would be racy)
    assert sorted(tmp_path.iterdir()) == [path, path.with_name(path.name + ".lock")]
    stored = json.loads(path.read_text())
    assert stored["texts"] == first and stored["digest"] == corpus_digest(first)
    caplog.clear()
    assert cached(loaded, tmp_path) == first
    assert not any("sampling" in r.getMessage() for r in caplog.records)
    assert any("reusing the sampled corpus" in r.getMessage() for r in caplog.records)
    assert first == sample_corpus(loaded, num_tokens=36, seed=1, sequence_length=12, progress=False)


def test_a_shipped_corpus_is_copied_into_the_cache_instead_of_sampled(
    tiny_loaded, tmp_path, monkeypatch, caplog
):
    loaded = tiny_loaded("llama")
    made = cached(loaded, tmp_path / "made")
    name = f"{loaded.fingerprint}-36-1-len12-full.json"
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    (shipped / name).write_text((tmp_path / "made" / name).read_text())
    monkeypatch.setattr(corpus, "SHIPPED_CORPORA", shipped)
    caplog.set_level(logging.INFO, logger=LOGGER)
    never_sample = StopAfter(1)  # sampling would raise WorkCancelled at its first step
    assert model_corpus(loaded, num_tokens=36, seed=1, sequence_length=12, progress=False,
                        cache_dir=tmp_path / "cache", cancelled=never_sample) == made
    assert never_sample.asked == 0
    assert json.loads((tmp_path / "cache" / name).read_text())["texts"] == made
    assert any("using the corpus shipped" in r.getMessage() for r in caplog.records)
    other_seed = tmp_path / "other"
    with pytest.raises(WorkCancelled):  # nothing shipped for seed 2: it samples
        model_corpus(loaded, num_tokens=36, seed=2, sequence_length=12, progress=False,
                     cache_dir=other_seed, cancelled=StopAfter(1))


def test_the_shipped_corpora_hold_what_their_names_and_digests_say():
    files = sorted(SHIPPED_CORPORA.glob("*.json"))
    assert files, "the default model's corpus ships with factsync"
    shipped = set()
    for path in files:
        stored = json.loads(path.read_text())
        assert path.name == (f"{stored['fingerprint']}-{stored['num_tokens']}-{stored['seed']}"
                             f"-len{stored['sequence_length']}"
                             f"{corpus._top_k_name(stored['top_k'])}.json")
        assert stored["format"] == corpus.CORPUS_FORMAT
        assert stored["digest"] == corpus_digest(stored["texts"])
        shipped.add((stored["num_tokens"], stored["top_k"]))
    default = StatisticsSettings()
    assert (default.tokens_for(1536), default.corpus_top_k) in shipped  # SmolLM2-135M's keys


class StopAfter:
    """A ``cancelled`` question that says yes from its ``calls``-th asking on."""

    def __init__(self, calls: int) -> None:
        self.calls = calls
        self.asked = 0

    def __call__(self) -> bool:
        self.asked += 1
        return self.asked >= self.calls


def test_a_stopped_sampling_keeps_its_batches_and_resumes_after_them(
    tiny_loaded, tmp_path, caplog
):
    loaded = tiny_loaded("llama")
    options = {"num_tokens": 72, "seed": 3, "cache_dir": tmp_path, "sequence_length": 12,
               "batch_size": 2, "progress": False}
    whole = sample_corpus(loaded, num_tokens=72, seed=3, sequence_length=12, progress=False)
    assert len(whole) == 6
    stop = StopAfter(12 * 2 + 5)  # asked once per token step: two batches, then mid-third
    heard = []
    with pytest.raises(WorkCancelled, match="corpus sampling was stopped"):
        model_corpus(loaded, **options, cancelled=stop,
                     report=lambda stage, done: heard.append((stage, done)))
    assert heard == [("sampling the corpus", 2 / 6), ("sampling the corpus", 4 / 6)]
    partial = tmp_path / f"{loaded.fingerprint}-72-3-len12-full.json.partial"
    assert json.loads(partial.read_text())["texts"] == whole[:4]
    assert not (tmp_path / f"{loaded.fingerprint}-72-3-len12-full.json").exists()

    caplog.set_level(logging.INFO, logger=LOGGER)
    counting = StopAfter(10**9)
    assert model_corpus(loaded, **options, cancelled=counting) == whole
    assert counting.asked == 12 * 1  # only the last batch was sampled
    assert any("resuming after 4 sequences" in r.getMessage() for r in caplog.records)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"{loaded.fingerprint}-72-3-len12-full.json",
        f"{loaded.fingerprint}-72-3-len12-full.json.lock"]


def test_a_partial_corpus_of_other_settings_is_not_resumed(tiny_loaded, tmp_path, caplog):
    loaded = tiny_loaded("llama")
    partial = tmp_path / f"{loaded.fingerprint}-36-1-len12-full.json.partial"
    partial.write_text(json.dumps({"seed": 99, "texts": ["not this"]}))
    caplog.set_level(logging.WARNING, logger=LOGGER)
    assert "not this" not in cached(loaded, tmp_path)
    assert any("ignoring the partly sampled corpus" in r.getMessage() for r in caplog.records)


def test_model_corpus_keys_on_fingerprint_tokens_seed_length_and_top_k(tiny_loaded, tmp_path):
    loaded = tiny_loaded("llama")
    other = tiny_loaded("llama", seed=1)
    default = cached(loaded, tmp_path)
    cached(other, tmp_path)
    cached(loaded, tmp_path, seed=2)
    cached(loaded, tmp_path, num_tokens=24)
    cached(loaded, tmp_path, sequence_length=6)
    first_kind = cached(loaded, tmp_path, top_k=50)
    cached(loaded, tmp_path, top_k=5)
    names = sorted(path.name for path in tmp_path.glob("*.json"))
    assert len(names) == 7
    # The default samples the whole distribution; corpora of the first default, top-k 50,
    # keep their names without a suffix.
    assert sum(name.endswith("-full.json") for name in names) == 5
    assert [name for name in names if not name.endswith("-full.json")] == [
        f"{loaded.fingerprint}-36-1-len12-top5.json", f"{loaded.fingerprint}-36-1-len12.json"]
    recorded = json.loads((tmp_path / f"{loaded.fingerprint}-36-1-len12.json").read_text())
    assert recorded["top_k"] == 50 and recorded["texts"] == first_kind
    recorded = json.loads((tmp_path / f"{loaded.fingerprint}-36-1-len12-full.json").read_text())
    assert recorded["top_k"] == 0 and recorded["texts"] == default
    assert default != first_kind


def test_the_full_distribution_draws_beyond_the_top_k():
    # Two likely tokens and 98 unlikely ones: together the unlikely carry about 70%.
    logits = torch.zeros(1, 100)
    logits[0, :2] = 3.0
    draws = 200
    generators = [torch.Generator().manual_seed(seed) for seed in range(draws)]
    top_two = corpus._top_k_sample(logits.expand(draws, -1), generators, 2)
    assert set(top_two.tolist()) == {0, 1}
    generators = [torch.Generator().manual_seed(seed) for seed in range(draws)]
    everything = corpus._top_k_sample(logits.expand(draws, -1), generators, 0)
    assert 0.6 < float((everything >= 2).float().mean()) < 0.8
    with pytest.raises(ValueError, match="top_k must not be negative, got -1"):
        sample_corpus(torch.nn.Identity(), num_tokens=10, top_k=-1)
    with pytest.raises(ValueError, match="corpus_top_k must not be negative, got -1"):
        StatisticsSettings(corpus_top_k=-1)


@pytest.mark.parametrize("top_k", [0, 5])
def test_a_batch_draws_what_a_multinomial_call_per_row_draws(top_k):
    # What the shipped corpora were sampled with: one torch.multinomial call per row.
    logits = torch.randn(32, 300, generator=torch.Generator().manual_seed(1)) * 3
    logits[:, 10:40] = float("-inf")  # banned tokens
    values, candidates = logits.topk(top_k or 300, dim=-1)
    probs = torch.softmax(values / corpus.SAMPLING_TEMPERATURE, dim=-1)
    for draw in range(20):
        seeds = range(draw * 32, draw * 32 + 32)
        one_by_one = torch.stack([
            candidates[row, torch.multinomial(probs[row], 1,
                                              generator=torch.Generator().manual_seed(seed))[0]]
            for row, seed in enumerate(seeds)
        ])
        generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        assert torch.equal(corpus._top_k_sample(logits, generators, top_k), one_by_one)


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda text: text[: len(text) // 2], "unreadable"),
        (lambda text: "[]", "does not hold a JSON object"),
        (lambda text: text.replace('"top_k": 0', '"top_k": 40'), "other settings"),
        (lambda text: text.replace('"texts": ["', '"texts": ["x'), "recorded digest"),
    ],
)
def test_damaged_corpus_cache_is_resampled_with_a_warning(
    tiny_loaded, tmp_path, caplog, damage, reason
):
    loaded = tiny_loaded("llama")
    first = cached(loaded, tmp_path)
    path = tmp_path / f"{loaded.fingerprint}-36-1-len12-full.json"
    path.write_text(damage(path.read_text()))
    caplog.set_level(logging.INFO, logger=LOGGER)
    assert cached(loaded, tmp_path) == first
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(reason in w and "sampling the corpus again" in w for w in warnings), warnings
    assert json.loads(path.read_text())["texts"] == first


def test_model_corpus_defaults_to_the_data_home(tiny_loaded, tmp_path, monkeypatch):
    monkeypatch.setenv("FACTSYNC_HOME", str(tmp_path))
    loaded = tiny_loaded("llama")
    model_corpus(loaded, num_tokens=12, sequence_length=12, progress=False)
    assert (tmp_path / "corpus" / f"{loaded.fingerprint}-12-0-len12-full.json").is_file()


# --- load_text_files ----------------------------------------------------------------


def test_text_files_give_paragraphs_and_jsonl_records_in_order(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("First line\nstill first.\n\n\n  Second.  \n\nThird\n")
    records = tmp_path / "records.jsonl"
    records.write_text('{"text": "one", "id": 1}\n\n{"text": "two"}\n')
    assert load_text_files([notes, str(records)]) == [
        "First line\nstill first.",
        "Second.",
        "Third",
        "one",
        "two",
    ]


@pytest.mark.parametrize(
    "name, content, match",
    [
        ("bad.jsonl", '{"text": "ok"}\n{"text": \n', r"bad\.jsonl:2: not valid JSON"),
        ("bad.jsonl", '{"text": "ok"}\n\n{"body": "x"}\n', r"bad\.jsonl:3: expected an object"),
        ("bad.jsonl", '["text"]\n', r"bad\.jsonl:1: expected an object with a string 'text'"),
        ("bad.jsonl", '{"text": 5}\n', r"bad\.jsonl:1: expected an object"),
        ("bad.csv", "text\nhello\n", r"bad\.csv has unsupported type '\.csv'"),
    ],
)
def test_bad_text_files_are_named_with_their_line(tmp_path, name, content, match):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(CorpusError, match=match):
        load_text_files([path])


def test_missing_text_file_is_named(tmp_path):
    with pytest.raises(CorpusError, match=r"corpus file .*nowhere\.txt does not exist"):
        load_text_files([tmp_path / "nowhere.txt"])


# --- mix_texts and the mixed statistics corpus ----------------------------------------


def test_mixed_texts_hold_the_share_in_every_prefix_of_the_budget(tiny_loaded):
    loaded = tiny_loaded("llama")
    files = [f"The capital of city {i} is Paris. " * (1 + i % 3) for i in range(60)]
    sampled = [f"Once upon a time, in {1900 + i}," for i in range(80)]
    mixed = mix_texts(loaded, files, sampled, sampled_share=0.25, token_budget=400)
    samples = set(sampled)
    is_sample = [text in samples for text in mixed]
    assert [text for text, sample in zip(mixed, is_sample, strict=True) if not sample] == files
    assert [text for text, sample in zip(mixed, is_sample, strict=True) if sample] == sampled
    longest = max(token_count(loaded, [text]) for text in files + sampled)
    total = from_sampled = read = 0
    while total < 400:
        count = token_count(loaded, [mixed[read]])
        total += count
        from_sampled += count if is_sample[read] else 0
        read += 1
        assert abs(from_sampled - 0.25 * total) <= longest
    # past the budget: the files' rest, then the samples'
    samples_read = sum(is_sample[:read])
    assert mixed[read:] == files[read - samples_read:] + sampled[samples_read:]


def test_samples_fill_in_for_files_shorter_than_their_share(tiny_loaded):
    loaded = tiny_loaded("llama")
    files = ["The capital of France is Paris.", "The capital of Italy is Rome."]
    sampled = [f"Once upon a time, in {1900 + i}," for i in range(20)]
    mixed = mix_texts(loaded, files, sampled, sampled_share=0.5, token_budget=10_000)
    assert mixed[:4] == [files[0], sampled[0], files[1], sampled[1]]
    assert mixed[4:] == sampled[2:]
    for share in (0.0, 1.0):
        with pytest.raises(ValueError, match=f"sampled_share must be between 0 and 1, got {share}"):
            mix_texts(loaded, files, sampled, sampled_share=share, token_budget=10)


def test_statistics_settings_mix_samples_only_with_files_and_below_the_whole():
    for share in (-0.1, 1.0):
        with pytest.raises(ValueError, match="corpus_sampled_share must be at least 0 and below 1"):
            StatisticsSettings(text_files=(Path("a.txt"),), corpus_sampled_share=share)
    with pytest.raises(ValueError, match="corpus_sampled_share mixes model-sampled text with "
                       "corpus files; name the files too"):
        StatisticsSettings(corpus_sampled_share=0.5)
    assert StatisticsSettings().source() == "model-sampled text"
    files = (Path("a.txt"), Path("b.jsonl"))
    assert StatisticsSettings(text_files=files).source() == "a.txt, b.jsonl"
    assert StatisticsSettings(text_files=files, corpus_sampled_share=0.5).source() == (
        "a.txt, b.jsonl with 50% model-sampled text")


def test_the_statistics_corpus_mixes_the_files_with_the_cached_samples(tiny_loaded, tmp_path):
    loaded = tiny_loaded("llama")
    notes = tmp_path / "notes.txt"
    notes.write_text("\n\n".join(f"The capital of city {i} is Paris." for i in range(200)))
    files_only = StatisticsSettings(corpus_tokens=1000, text_files=(notes,))
    assert statistics_corpus(loaded, [1], files_only, home=tmp_path / "home").texts == (
        load_text_files([notes]))
    assert not (tmp_path / "home").exists()  # the files alone sample nothing

    mixed = replace(files_only, corpus_sampled_share=0.5)
    corpus = statistics_corpus(loaded, [1], mixed, home=tmp_path / "home")
    samples = model_corpus(loaded, num_tokens=1000, cache_dir=tmp_path / "home" / "corpus",
                           progress=False)  # the default's corpus, read from the cache
    assert corpus.token_budget == 1000
    assert corpus.texts == mix_texts(loaded, load_text_files([notes]), samples,
                                     sampled_share=0.5, token_budget=1000)
    assert set(corpus.texts) == set(load_text_files([notes])) | set(samples)

    broken = replace(mixed, text_files=(tmp_path / "broken.csv",))
    (tmp_path / "broken.csv").write_text("text\n")
    with pytest.raises(CorpusError, match="unsupported type"):
        statistics_corpus(loaded, [1], broken, home=tmp_path / "elsewhere")
    assert not (tmp_path / "elsewhere").exists()  # a bad file fails before any sampling


HOLDER = """
import shutil, sys, time
from filelock import FileLock
target, source = sys.argv[1:]
with FileLock(target + ".lock"):
    print("locked", flush=True)
    time.sleep(1.0)
    shutil.copy(source, target)
"""


def test_a_corpus_another_process_is_sampling_is_waited_for_then_read(
    tiny_loaded, tmp_path, caplog
):
    loaded = tiny_loaded("llama")
    expected = cached(loaded, tmp_path / "elsewhere")
    name = f"{loaded.fingerprint}-36-1-len12-full.json"
    shared = tmp_path / "shared"
    shared.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(shared / name),
                               str(tmp_path / "elsewhere" / name)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    caplog.set_level(logging.INFO, logger="factsync")
    caplog.clear()  # only what this process does while the other holds the lock
    assert cached(loaded, shared) == expected
    assert holder.wait(timeout=30) == 0
    said = [r.getMessage() for r in caplog.records]
    assert any("another process is computing the corpus" in m for m in said)
    assert any("reusing the sampled corpus" in m for m in said)
    assert not any("sampling a corpus" in m for m in said)
