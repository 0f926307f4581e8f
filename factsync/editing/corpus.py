"""The offline text corpus that key statistics are computed over.

MEMIT-style methods need the second moment of each edited layer's keys over "ordinary"
text. No network is assumed, so the default corpus is sampled from the model itself;
operators can give their own text files instead, or mix them with the samples
(``mix_texts``). Either way the corpus is a list of strings, and ``corpus_digest``
names it in cache keys.

Sampling choices (module constants, so that a cached corpus stays what its key says):
- the whole distribution at temperature 1.0 by default: ancestral sampling from the
  model's own distribution, which a model trained for likelihood makes closest to its
  training text. On SmolLM2-135M its statistics price edits nearer to what ordinary
  English feels than those of text drawn from the 50 likeliest tokens (``top_k`` 50,
  the default before; ``bench statistics-fit``, bench/README.md), and a 1,000-fact
  stream over them harmed held-out text less.
- special tokens are never sampled: a sampled document separator would glue two
  unrelated documents together once special tokens are dropped at decoding.
- every sequence has its own random generator seeded from (seed, sequence index), so a
  corpus does not depend on the batch size it was sampled with, and sampling stopped
  part-way resumes with the next sequence: ``model_corpus`` keeps the sequences sampled
  so far in a ``.partial`` file beside the cache file.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from factsync.cache_lock import computing
from factsync.durable import write_text
from factsync.editing.cancellation import Cancelled, WorkCancelled, never
from factsync.editing.covariance import token_count
from factsync.editing.progress import Progress, silent
from factsync.models.loading import LoadedModel
from factsync.paths import data_home

log = logging.getLogger(__name__)

# ``top_k`` that samples every token the model may write: no tail is cut.
FULL_DISTRIBUTION = 0
SAMPLING_TOP_K = FULL_DISTRIBUTION
# The ``top_k`` of the first sampled corpora, whose cache names say nothing of it: a
# cache file keeps the meaning its name had when it was written.
UNNAMED_TOP_K = 50
# 1.0 samples the model's own distribution, which is what the statistics should reflect.
SAMPLING_TEMPERATURE = 1.0
# Version of the sampler and of the cache file's layout; bump when either changes.
CORPUS_FORMAT = 1
# Beside a cache file being sampled: the texts so far, to resume from.
PARTIAL_SUFFIX = ".partial"
# Corpora sampled once for the default model and shipped, named as cache files are: a
# first start then skips minutes of sampling that would give the same texts.
SHIPPED_CORPORA = Path(__file__).parent / "corpora"

# Varied short openings: narrative, encyclopaedic, news, instructions, dialogue, code.
OPENINGS: tuple[str, ...] = (
    "The",
    "In 1998,",
    "Once upon a time",
    "According to the report,",
    "Here is how to",
    "The city of",
    "Scientists have found that",
    "My favourite",
    "Q: What is",
    "def main():",
    "Yesterday, the government",
    "The history of",
    "When I was young,",
    "A new study shows",
    "Dear customer,",
    "Chapter 1.",
)
OPENING_TOKENS = 16
"""Tokens a sequence may hold before its sampled ones (the prompt prefix and an opening)."""


class CorpusError(ValueError):
    """A corpus file is missing, has an unsupported type, or holds a bad line."""


def corpus_digest(texts: Iterable[str]) -> str:
    """A 16-hex-digit sha256 prefix naming a corpus, for cache keys.

    Each text is framed by its length, so ``["ab", "c"]`` and ``["a", "bc"]`` differ;
    the order of texts matters (it decides which tokens a budget takes).
    """
    digest = hashlib.sha256()
    for text in texts:
        encoded = text.encode("utf-8")
        digest.update(len(encoded).to_bytes(8, "little"))
        digest.update(encoded)
    return digest.hexdigest()[:16]


def sample_corpus(
    loaded: LoadedModel,
    *,
    num_tokens: int,
    seed: int = 0,
    sequence_length: int = 128,
    batch_size: int = 16,
    top_k: int = SAMPLING_TOP_K,
    progress: bool = True,
    done: list[str] | None = None,
    on_batch: Callable[[list[str]], None] | None = None,
    cancelled: Cancelled = never,
) -> list[str]:
    """Sample texts from the model itself, about ``num_tokens`` tokens in all.

    ``ceil(num_tokens / sequence_length)`` sequences are sampled, each of exactly
    ``sequence_length`` new tokens after one of ``OPENINGS`` (picked by the sequence's own
    generator). Every sequence starts with ``loaded.prefix_ids``, which the returned text
    leaves out; special tokens are never sampled. The same arguments give the same texts.
    ``batch_size`` trades memory for speed; it moves the texts only through the rounding
    of padded batches (on SmolLM2-135M, one sequence in four sampled 4 at a time differs
    from the same sequence sampled 64 at a time).

    Args:
        loaded: the model to sample from; it is left unchanged.
        num_tokens: total number of tokens to sample (openings not counted).
        seed: seed of the per-sequence random generators.
        sequence_length: new tokens per sequence.
        batch_size: sequences sampled together.
        top_k: each token is drawn from the model's ``top_k`` likeliest;
            ``FULL_DISTRIBUTION`` (0) draws from all of them.
        progress: show a tqdm progress bar over sampled tokens.
        done: the first sequences' texts, sampled before with the same arguments;
            sampling goes on from the next one.
        on_batch: called with every text so far after each batch.
        cancelled: asked before every sampled token; when it answers yes, sampling
            stops with ``WorkCancelled`` (the batch under way is dropped).
    """
    if num_tokens <= 0:
        raise ValueError(f"num_tokens must be positive, got {num_tokens}")
    if sequence_length <= 0:
        raise ValueError(f"sequence_length must be positive, got {sequence_length}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if top_k < 0:
        raise ValueError(f"top_k must not be negative, got {top_k}")
    count = math.ceil(num_tokens / sequence_length)
    texts = list(done or [])[:count]
    with tqdm(
        total=count * sequence_length, initial=len(texts) * sequence_length, unit="tok",
        desc="sampling corpus", disable=not progress
    ) as bar:
        for start in range(len(texts), count, batch_size):
            indices = range(start, min(start + batch_size, count))
            generators = [_sequence_generator(seed, index) for index in indices]
            texts.extend(_sample_batch(loaded, generators, sequence_length, top_k, bar,
                                       cancelled))
            if on_batch is not None:
                on_batch(texts)
    return texts


CPU_SAMPLING_BATCH = 64
"""Sequences sampled together on a CPU. On SmolLM2-135M and 2 cores (``bench sampling``)
64 sampled twice the tokens per second of 16; 128 only 6% more, for twice the memory."""
MIN_SAMPLING_BATCH = 16
"""Sequences sampled together at least on a GPU, however little memory it has free."""
MAX_SAMPLING_BATCH = 512
SAMPLING_MEMORY_SHARE = 0.25
"""Share of a GPU's free memory a sampling batch may take; the rest is headroom."""


def sampling_batch_size(loaded: LoadedModel, sequence_length: int) -> int:
    """Sequences to sample together: ``CPU_SAMPLING_BATCH`` on a CPU; on a GPU, as many
    as fit in ``SAMPLING_MEMORY_SHARE`` of its free memory (``batch_for_memory``)."""
    device = loaded.device
    if device.type != "cuda":
        return CPU_SAMPLING_BATCH
    free, _ = torch.cuda.mem_get_info(device)
    return batch_for_memory(loaded, sequence_length, int(free * SAMPLING_MEMORY_SHARE))


def batch_for_memory(loaded: LoadedModel, sequence_length: int, budget_bytes: int) -> int:
    """Sequences whose sampling fits in ``budget_bytes`` (``sampling_bytes_per_sequence``
    each), between ``MIN_SAMPLING_BATCH`` and ``MAX_SAMPLING_BATCH``."""
    per_sequence = sampling_bytes_per_sequence(loaded, sequence_length)
    return max(MIN_SAMPLING_BATCH, min(MAX_SAMPLING_BATCH, budget_bytes // per_sequence))


def sampling_bytes_per_sequence(loaded: LoadedModel, sequence_length: int) -> int:
    """Memory one sequence of a sampling batch takes: the keys and values of every layer
    for all its tokens (the prompt's included) and a float32 row of logits per step."""
    config = loaded.model.config
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    element = next(loaded.model.parameters()).element_size()
    tokens = sequence_length + OPENING_TOKENS
    return 2 * loaded.num_layers * heads * head_dim * element * tokens + config.vocab_size * 4


def _sequence_generator(seed: int, index: int) -> torch.Generator:
    """A CPU generator for sequence ``index`` of the corpus sampled with ``seed``."""
    material = hashlib.sha256(f"factsync-corpus:{seed}:{index}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(material[:8], "little"))


@torch.no_grad()
def _sample_batch(
    loaded: LoadedModel, generators: list[torch.Generator], length: int, top_k: int,
    bar: tqdm, cancelled: Cancelled,
) -> list[str]:
    """Sample one batch, one row per generator; returns the decoded texts."""
    tokenizer = loaded.tokenizer
    prefix = list(loaded.prefix_ids)
    starts: list[list[int]] = []
    for generator in generators:
        choice = int(torch.randint(len(OPENINGS), (1,), generator=generator))
        opening = tokenizer(OPENINGS[choice], add_special_tokens=not prefix)["input_ids"]
        starts.append(prefix + list(opening))
    # Left padding, so every row's next token is sampled at the same column.
    width = max(len(s) for s in starts)
    rows = len(starts)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((rows, width), pad, dtype=torch.long)
    mask = torch.zeros((rows, width), dtype=torch.long)
    for row, start in enumerate(starts):
        input_ids[row, width - len(start) :] = torch.tensor(start)
        mask[row, width - len(start) :] = 1
    device = loaded.device
    input_ids, mask = input_ids.to(device), mask.to(device)
    # Left padding needs explicit positions: each row counts from its first real token.
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    banned = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
    cache_keyword = _cache_keyword(loaded.model)
    cache: Any = None
    step_ids, step_positions = input_ids, positions
    sampled: list[torch.Tensor] = []
    for _ in range(length):
        if cancelled():
            raise WorkCancelled("corpus sampling was stopped")
        out = loaded.model(
            input_ids=step_ids,
            attention_mask=mask,
            position_ids=step_positions,
            use_cache=True,
            logits_to_keep=1,
            **{cache_keyword: cache},
        )
        cache = out[cache_keyword]
        logits = out.logits[:, -1, :].float().cpu()  # (rows, vocab)
        logits[:, banned[banned < logits.shape[-1]]] = float("-inf")
        # Embedding rows past the tokenizer's vocabulary are padding, not tokens.
        logits[:, len(tokenizer) :] = float("-inf")
        next_ids = _top_k_sample(logits, generators, top_k)  # (rows,)
        sampled.append(next_ids)
        step_ids = next_ids.to(device).unsqueeze(1)  # (rows, 1)
        step_positions = step_positions[:, -1:] + 1
        mask = torch.cat([mask, torch.ones((rows, 1), dtype=mask.dtype, device=device)], dim=1)
        bar.update(rows)
    tokens = torch.stack(sampled, dim=1)  # (rows, length)
    return [
        tokenizer.decode(start[len(prefix) :] + tokens[row].tolist(), skip_special_tokens=True)
        for row, start in enumerate(starts)
    ]


def _top_k_sample(logits: torch.Tensor, generators: list[torch.Generator],
                  top_k: int) -> torch.Tensor:
    """One token per row from the ``top_k`` likeliest of ``logits`` (rows, vocab), or from
    all of them for ``FULL_DISTRIBUTION``, each row with its generator."""
    vocabulary = logits.shape[-1]
    k = vocabulary if top_k == FULL_DISTRIBUTION else min(top_k, vocabulary)
    values, candidates = logits.topk(k, dim=-1)  # (rows, k)
    probs = torch.softmax(values / SAMPLING_TEMPERATURE, dim=-1)
    # torch.multinomial draws one sample as argmax(p / q), q ~ Exp(1) from the generator;
    # drawing each row's q with its own generator and taking one argmax over the batch
    # picks exactly what a multinomial call per row picks, in one division and argmax.
    exponential = torch.empty_like(probs)
    for row, generator in enumerate(generators):
        exponential[row].exponential_(1, generator=generator)
    picks = (probs / exponential).argmax(dim=-1)
    return candidates[torch.arange(len(generators)), picks]


def _cache_keyword(model: torch.nn.Module) -> str:
    """Name of the forward argument taking the key-value cache (renamed in transformers 5)."""
    parameters = inspect.signature(model.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def load_text_files(paths: Iterable[str | Path]) -> list[str]:
    """Read user-provided corpus files into a list of texts, in the order given.

    - ``.txt``: one text per paragraph (blocks separated by blank lines), so a long
      file is not cut to one window of ``max_length`` tokens.
    - ``.jsonl``: one JSON object per line with a string ``"text"`` field; blank lines
      are skipped.

    Raises ``CorpusError`` naming the file (and line) for a missing file, an unsupported
    suffix, a line that is not JSON, or a line without a string ``"text"``.
    """
    texts: list[str] = []
    for raw in paths:
        path = Path(raw)
        if not path.is_file():
            raise CorpusError(f"corpus file {path} does not exist")
        suffix = path.suffix.lower()
        if suffix == ".txt":
            texts.extend(_read_txt(path))
        elif suffix == ".jsonl":
            texts.extend(_read_jsonl(path))
        else:
            raise CorpusError(
                f"corpus file {path} has unsupported type {suffix or '(none)'!r}; "
                "use .txt (paragraphs) or .jsonl (objects with a 'text' field)"
            )
    return texts


def mix_texts(loaded: LoadedModel, files: list[str], sampled: list[str], *,
              sampled_share: float, token_budget: int) -> list[str]:
    """``files`` and ``sampled`` interleaved so that every prefix of the answer, up to
    ``token_budget`` tokens (counted as the key statistics count them), holds about
    ``sampled_share`` of its tokens from ``sampled`` and the rest from ``files``; each
    source keeps its order. The budget read from the front then takes the two in that
    proportion. Past the budget, or once one source runs out, the rest of the files and
    then of the samples follow."""
    if not 0 < sampled_share < 1:
        raise ValueError(f"sampled_share must be between 0 and 1, got {sampled_share}")
    shares = (1.0 - sampled_share, sampled_share)
    sources = (files, sampled)
    taken, tokens = [0, 0], [0, 0]
    mixed: list[str] = []
    while taken[0] < len(files) and taken[1] < len(sampled) and sum(tokens) < token_budget:
        # The source furthest below its share gives the next text; files first on a tie.
        source = 0 if tokens[0] * shares[1] <= tokens[1] * shares[0] else 1
        text = sources[source][taken[source]]
        tokens[source] += token_count(loaded, [text])
        taken[source] += 1
        mixed.append(text)
    return mixed + files[taken[0]:] + sampled[taken[1]:]


def _read_txt(path: Path) -> list[str]:
    """Paragraphs of a text file, stripped, empty ones dropped."""
    with open(path, encoding="utf-8") as handle:
        content = handle.read()
    paragraphs: list[str] = []
    current: list[str] = []
    for line in content.splitlines():
        if line.strip():
            current.append(line)
        elif current:
            paragraphs.append("\n".join(current).strip())
            current = []
    if current:
        paragraphs.append("\n".join(current).strip())
    return paragraphs


def _read_jsonl(path: Path) -> list[str]:
    """The ``"text"`` field of every non-blank line of a JSON-lines file."""
    texts: list[str] = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CorpusError(f"{path}:{number}: not valid JSON ({exc.msg})") from exc
            text = record.get("text") if isinstance(record, dict) else None
            if not isinstance(text, str):
                raise CorpusError(f"{path}:{number}: expected an object with a string 'text' field")
            texts.append(text)
    return texts


def model_corpus(
    loaded: LoadedModel,
    *,
    num_tokens: int,
    seed: int = 0,
    cache_dir: Path | None = None,
    sequence_length: int = 128,
    batch_size: int | None = None,
    top_k: int = SAMPLING_TOP_K,
    progress: bool = True,
    cancelled: Cancelled = never,
    report: Progress = silent,
) -> list[str]:
    """The model-sampled corpus, read from the cache or sampled and cached.

    The cache file is ``<cache_dir>/<fingerprint>-<num_tokens>-<seed>-len<L>.json`` with
    ``cache_dir`` defaulting to ``data_home()/corpus``; ``L`` is ``sequence_length``,
    which changes the texts (``batch_size`` does not; ``None`` lets
    ``sampling_batch_size`` choose it). A ``top_k`` other than ``UNNAMED_TOP_K`` adds
    ``-top<k>`` to the name (``-full`` for ``FULL_DISTRIBUTION``). The file is written atomically. A
    cache file that cannot be read, or whose recorded settings or digest do not match,
    is logged at WARNING and sampled again. A corpus shipped with factsync under that
    name (``SHIPPED_CORPORA``) is copied into the cache instead of sampling. While
    sampling, the texts so far are written after every batch to the same name plus
    ``.partial``, so a run stopped by ``cancelled`` (``WorkCancelled``) or killed
    resumes where it was. A process that
    finds another sampling the same corpus waits for it and reads its file. ``report``
    hears the share of sequences sampled after every batch.
    """
    directory = Path(cache_dir) if cache_dir is not None else data_home() / "corpus"
    name = f"{loaded.fingerprint}-{num_tokens}-{seed}-len{sequence_length}{_top_k_name(top_k)}.json"
    path = directory / name
    settings = {
        "format": CORPUS_FORMAT,
        "fingerprint": loaded.fingerprint,
        "num_tokens": num_tokens,
        "seed": seed,
        "sequence_length": sequence_length,
        "top_k": top_k,
        "temperature": SAMPLING_TEMPERATURE,
    }
    with computing(path, "the corpus"):
        batch = batch_size or sampling_batch_size(loaded, sequence_length)
        return _cached_or_sampled(loaded, path, settings, batch_size=batch,
                                  progress=progress, cancelled=cancelled, report=report)


def _top_k_name(top_k: int) -> str:
    """What a corpus's cache name says of its ``top_k``: nothing for ``UNNAMED_TOP_K``."""
    if top_k == UNNAMED_TOP_K:
        return ""
    return "-full" if top_k == FULL_DISTRIBUTION else f"-top{top_k}"


def _cached_or_sampled(loaded: LoadedModel, path: Path, settings: dict[str, Any], *,
                       batch_size: int, progress: bool, cancelled: Cancelled,
                       report: Progress) -> list[str]:
    """``model_corpus`` under the cache entry's lock."""
    num_tokens, seed = settings["num_tokens"], settings["seed"]
    sequence_length = settings["sequence_length"]
    if path.exists():
        try:
            texts = _read_cached_corpus(path, settings)
        except CorpusError as exc:
            log.warning("%s; sampling the corpus again", exc)
        else:
            log.info("reusing the sampled corpus %s (%d texts)", path, len(texts))
            return texts
    shipped = SHIPPED_CORPORA / path.name
    if shipped.exists():
        texts = _read_cached_corpus(shipped, settings)  # a damaged one is a packaging bug
        write_text(path, shipped.read_text(encoding="utf-8"))
        log.info("using the corpus shipped with factsync for %s (%d texts)", loaded.name,
                 len(texts))
        return texts
    partial = path.with_name(path.name + PARTIAL_SUFFIX)
    done = _resumable(partial, settings)
    log.info(
        "sampling a corpus of %d tokens from %s (seed %d) into %s%s",
        num_tokens,
        loaded.name,
        seed,
        path,
        f", resuming after {len(done)} sequences" if done else "",
    )

    sequences = math.ceil(num_tokens / sequence_length)

    def keep(texts: list[str]) -> None:
        write_text(partial, json.dumps({**settings, "texts": texts}, ensure_ascii=False))
        report("sampling the corpus", len(texts) / sequences)

    texts = sample_corpus(
        loaded,
        num_tokens=num_tokens,
        seed=seed,
        sequence_length=sequence_length,
        batch_size=batch_size,
        top_k=settings["top_k"],
        progress=progress,
        done=done,
        on_batch=keep,
        cancelled=cancelled,
    )
    document = {**settings, "digest": corpus_digest(texts), "texts": texts}
    write_text(path, json.dumps(document, ensure_ascii=False))
    partial.unlink(missing_ok=True)
    return texts


def _resumable(partial: Path, settings: dict[str, Any]) -> list[str]:
    """The texts a stopped sampling left in ``partial``, if made with ``settings``."""
    if not partial.exists():
        return []
    try:
        with open(partial, encoding="utf-8") as handle:
            stored = json.load(handle)
        texts = stored["texts"]
        if any(stored.get(k) != v for k, v in settings.items()) or not all(
                isinstance(t, str) for t in texts):
            raise ValueError("other settings")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring the partly sampled corpus %s (%s)", partial, exc)
        return []
    return texts


def _read_cached_corpus(path: Path, settings: dict[str, Any]) -> list[str]:
    """Texts of a cached corpus file; ``CorpusError`` when it is damaged or mismatched."""
    try:
        with open(path, encoding="utf-8") as handle:
            stored = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorpusError(f"cached corpus {path} is unreadable ({exc})") from exc
    if not isinstance(stored, dict):
        raise CorpusError(f"cached corpus {path} does not hold a JSON object")
    texts = stored.get("texts")
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise CorpusError(f"cached corpus {path} has no list of texts")
    differing = sorted(k for k, v in settings.items() if stored.get(k) != v)
    if differing:
        raise CorpusError(f"cached corpus {path} was made with other settings ({differing})")
    if stored.get("digest") != corpus_digest(texts):
        raise CorpusError(f"cached corpus {path} does not match its recorded digest")
    return texts
