"""The daemon's YAML configuration, validated at start-up.

Every section is a dataclass with typed, documented fields; ``load_config`` rejects
unknown keys, wrong types and missing files with a message naming the key. Relative
paths are resolved against the data directory, except those of the policy and corpus
files, which are relative to the config file.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

from factsync.editing.build import StatisticsSettings
from factsync.editing.corpus import SAMPLING_TOP_K
from factsync.executors.settings import ExecutorSettings
from factsync.paths import data_home
from factsync.typed_yaml import Choice, SchemaError, build, load_yaml_file

TOKEN_ENV = "FACTSYNC_API_TOKEN"
"""Environment variable that overrides ``api.token``."""


@dataclass(frozen=True)
class ModelConfig:
    """Which model the daemon edits.

    Attributes:
        path: a local HuggingFace model directory, or ``default`` for SmolLM2-135M-Instruct.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        dtype: ``float32``, ``bfloat16`` or ``float16``.
        corpus_tokens: tokens of text behind the key statistics; unset scales them with
            the model's key size (300,000 at least).
        corpus_files: text to compute the key statistics over instead of text sampled
            from the model, relative to the config file: ``.txt`` files (one text per
            paragraph) or ``.jsonl`` files (a ``"text"`` field per line). Text like what
            the model serves describes its keys best (see the README).
        corpus_sampled_share: with ``corpus_files``, the share of the statistics' tokens
            sampled from the model and mixed with the files' text; 0 (the default) uses
            the files alone. 0.5 hedges when the served text is not all like the files.
        corpus_top_k: when the model samples the statistics' text itself, it draws each
            token from its ``corpus_top_k`` likeliest; 0 (the default) draws from its
            whole distribution. Used with ``corpus_files`` only for their sampled share.
        trust_remote_code: let a model directory run its own Python code. Off by
            default: only architectures that transformers itself ships can load.
    """

    path: str = "default"
    device: str = "auto"
    dtype: str = "float32"
    corpus_tokens: int | None = None
    corpus_files: tuple[Path, ...] = ()
    corpus_sampled_share: float = 0.0
    corpus_top_k: int = SAMPLING_TOP_K
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        self.statistics()  # the statistics' own checks, named by field
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        if self.path != "default" and not Path(self.path).expanduser().is_dir():
            raise ValueError(f"path {self.path!r} is not a model directory")

    def statistics(self) -> StatisticsSettings:
        """Where the engine's key statistics come from."""
        return StatisticsSettings(corpus_tokens=self.corpus_tokens,
                                  text_files=self.corpus_files,
                                  corpus_sampled_share=self.corpus_sampled_share,
                                  corpus_top_k=self.corpus_top_k)


class ConnectorType(Choice):
    """Where a connector reads facts from."""

    FILE = "file"
    SQL = "sql"
    HTTP = "http"


@dataclass(frozen=True)
class ConnectorConfig:
    """A fact source. Fields apply to the types named in brackets.

    Attributes:
        type: ``file``, ``sql`` or ``http``.
        name: source name stamped on its facts (default ``<type>:<path, table or host>``).
        priority: when two sources disagree about a fact, the higher priority wins;
            between equal priorities the latest row wins.
        full_scan_seconds: full re-read interval (default ``schedules.full_scan_seconds``).
        path: [file] the directory; relative paths are under the data directory.
        polling: [file] poll for changes instead of using inotify.
        debounce_seconds: [file] quiet time after a file's last change before reading it.
        url: [sql] SQLAlchemy URL; [http] the feed's URL. ``${VAR}`` is expanded.
        table: [sql] table to read. query: [sql] a SELECT to read instead.
        columns: [sql] fact field -> column name (subject, relation, object, id,
            updated_at, deleted).
        listen_channel: [sql] PostgreSQL channel whose NOTIFY triggers a poll.
        headers: [http] extra request headers; ``${VAR}`` is expanded in values.
        poll_seconds: [sql, http] incremental poll interval.
        timeout_seconds: [http] per request.
    """

    type: ConnectorType = ConnectorType.FILE
    name: str | None = None
    priority: int = 0
    full_scan_seconds: float | None = None
    path: Path = Path("facts")
    polling: bool = False
    debounce_seconds: float = 0.5
    url: str | None = None
    table: str | None = None
    query: str | None = None
    columns: dict[str, str] = field(default_factory=dict)
    listen_channel: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    poll_seconds: float = 10.0
    timeout_seconds: float = 10.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "type", ConnectorType.parse(self.type, "type"))
        for name in ("debounce_seconds", "poll_seconds", "timeout_seconds"):
            if getattr(self, name) < 0 or (name != "debounce_seconds" and getattr(self, name) == 0):
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.full_scan_seconds is not None and self.full_scan_seconds <= 0:
            raise ValueError(f"full_scan_seconds must be positive, got {self.full_scan_seconds}")
        if self.type is not ConnectorType.FILE and not self.url:
            raise ValueError(f"a {self.type} connector needs url")
        if self.type is ConnectorType.SQL and (self.table is None) == (self.query is None):
            raise ValueError("a sql connector needs exactly one of table and query")
        if self.type is not ConnectorType.SQL and (self.table or self.query or self.columns
                                   or self.listen_channel):
            raise ValueError("table, query, columns and listen_channel are for sql connectors")
        if self.type is not ConnectorType.HTTP and self.headers:
            raise ValueError("headers are for http connectors")

    @property
    def source_name(self) -> str:
        """The name stamped on this connector's facts."""
        if self.name:
            return self.name
        if self.type is ConnectorType.FILE:
            return f"file:{self.path.name}"
        if self.type is ConnectorType.SQL:
            return f"sql:{self.table or 'query'}"
        return f"http:{urlsplit(self.url or '').netloc}"


@dataclass(frozen=True)
class RelationConfig:
    """A relation added to (or replacing one of) the built-in catalog."""

    template: str
    paraphrases: tuple[str, ...] = ()
    question: str = ""
    alias: str | None = None
    phrasings: tuple[str, ...] = ()


@dataclass(frozen=True)
class ListenConfig:
    """An address to serve on."""

    host: str = "127.0.0.1"
    port: int = 9108

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")


@dataclass(frozen=True)
class ApiConfig:
    """The HTTP API.

    Attributes:
        host: address to bind (loopback by default).
        port: TCP port (0 picks a free one).
        token: bearer token required on mutating endpoints; ``FACTSYNC_API_TOKEN``
            overrides it.
        max_body_bytes: larger request bodies are refused.
        push_priority: priority of facts pushed with ``POST /facts`` (see connectors).
    """

    host: str = "127.0.0.1"
    port: int = 8080
    token: str | None = None
    max_body_bytes: int = 1_000_000
    push_priority: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if self.max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be positive, got {self.max_body_bytes}")


@dataclass(frozen=True)
class ScheduleConfig:
    """How often periodic work runs (seconds).

    Attributes:
        full_scan_seconds: re-read every connector's whole source.
        worker_poll_seconds: the worker looks for work at least this often.
        health_check_seconds: check that the data directory takes writes and the model
            directory is still there (also checked before every job).
    """

    full_scan_seconds: float = 60.0
    worker_poll_seconds: float = 2.0
    health_check_seconds: float = 30.0

    def __post_init__(self) -> None:
        for name in ("full_scan_seconds", "worker_poll_seconds", "health_check_seconds"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


@dataclass(frozen=True)
class AlertsConfig:
    """Where operator alerts go.

    Attributes:
        webhook_url: a URL that receives each alert as JSON.
        alertmanager_url: an Alertmanager base URL (``http://host:9093``).
        stuck_job_seconds: a job running longer than this raises an alert.
        timeout_seconds: per delivery attempt.
    """

    webhook_url: str | None = None
    alertmanager_url: str | None = None
    stuck_job_seconds: float = 3600.0
    timeout_seconds: float = 5.0

    def __post_init__(self) -> None:
        for name in ("webhook_url", "alertmanager_url"):
            url = getattr(self, name)
            if url is not None and not url.startswith(("http://", "https://")):
                raise ValueError(f"{name} must be an http(s) URL, got {url!r}")
        if self.stuck_job_seconds <= 0:
            raise ValueError(f"stuck_job_seconds must be positive, got {self.stuck_job_seconds}")


SERVABLE_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
"""The adapter ranks vLLM accepts as ``--max-lora-rank``."""


@dataclass(frozen=True)
class ExportConfig:
    """Exports of the live version and the serving engines to keep on it.

    Attributes:
        adapter: write a PEFT LoRA adapter per live version (``exports/adapter/``).
        merged: write a merged HuggingFace checkpoint per live version (``exports/merged/``).
        max_rank: the adapter's rank budget, one of the ranks vLLM serves
            (``SERVABLE_RANKS``). With ``fold``, a version whose adapter would need more
            is folded into a new serving base; without, the adapter is SVD-truncated.
        fold: fold the live version into a new serving base (a full checkpoint under
            ``exports/base/``) when its adapter would pass ``max_rank``.
        vllm_url: a vLLM server to load each new adapter into (runtime LoRA updating).
        vllm_adapter_prefix: adapters are served by vLLM as ``<prefix>-<version>``.
        sglang_url: an SGLang server to load each new adapter into (dynamic LoRA loading).
        sglang_adapter_prefix: adapters are served by SGLang as ``<prefix>-<version>``.
        webhook_url: a URL told of every live-version change.
        verify: load each export as a serving engine would and check it answers like the
            live model before it becomes ``current`` and serving engines hear of it.
        verify_sample: applied facts drawn at random and probed per verification
            (0 = all), beside the facts the export adds and the canaries.
        verify_tolerance: share of probes an export may answer differently.
    """

    adapter: bool = True
    merged: bool = False
    max_rank: int = 64
    fold: bool = True
    vllm_url: str | None = None
    vllm_adapter_prefix: str = "factsync"
    sglang_url: str | None = None
    sglang_adapter_prefix: str = "factsync"
    webhook_url: str | None = None
    verify: bool = True
    verify_sample: int = 32
    verify_tolerance: float = 0.01

    def __post_init__(self) -> None:
        if self.max_rank not in SERVABLE_RANKS:
            raise ValueError(f"max_rank must be a LoRA rank vLLM serves "
                             f"({', '.join(map(str, SERVABLE_RANKS))}), got {self.max_rank}")
        if self.verify_sample < 0:
            raise ValueError(f"verify_sample must not be negative, got {self.verify_sample}")
        if not 0 <= self.verify_tolerance < 1:
            raise ValueError(f"verify_tolerance must be in [0, 1), got {self.verify_tolerance}")
        for name in ("vllm_url", "sglang_url", "webhook_url"):
            url = getattr(self, name)
            if url is not None and not url.startswith(("http://", "https://")):
                raise ValueError(f"{name} must be an http(s) URL, got {url!r}")
        for name in ("vllm_url", "sglang_url"):
            if getattr(self, name) and not self.adapter:
                raise ValueError(f"{name} needs adapter: true (the engine is given the adapter)")


@dataclass(frozen=True)
class LogConfig:
    """Logging: level and one-JSON-object-per-line output."""

    level: str = "INFO"
    json: bool = False


@dataclass(frozen=True)
class DaemonConfig:
    """The whole configuration file.

    Attributes:
        data_dir: state, versions and the default facts directory (default
            ``$FACTSYNC_HOME`` or ``~/.cache/factsync``).
        cache_dir: converted models, sampled corpus and key statistics (default: the
            same as ``data_dir``'s default, so several data directories share them).
        model: the model to edit.
        policy: the policy file (relative to the config file); the shipped default
            policy when absent.
        connectors: fact sources.
        relations: relations added to the built-in catalog, by id.
        metrics: where Prometheus metrics are served.
        api: the HTTP API.
        schedules: periodic work.
        alerts: operator alerts.
        export: exports of the live version and serving engines to notify.
        log: logging.
        executor: where the z optimisation and KPI scoring run: ``local`` (in the
            daemon) or ``ray`` (workers on a Ray cluster, each reading ``model.path``).
        min_free_mb: free space kept under the data directory for versions and exports;
            below it no edit job starts and ``FactsyncDataDirUnwritable`` fires.
    """

    data_dir: Path | None = None
    cache_dir: Path | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    policy: Path | None = None
    connectors: tuple[ConnectorConfig, ...] = (ConnectorConfig(),)
    relations: dict[str, RelationConfig] = field(default_factory=dict)
    metrics: ListenConfig = field(default_factory=ListenConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    schedules: ScheduleConfig = field(default_factory=ScheduleConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    log: LogConfig = field(default_factory=LogConfig)
    executor: ExecutorSettings = field(default_factory=ExecutorSettings)
    min_free_mb: float = 100.0

    def __post_init__(self) -> None:
        if self.min_free_mb < 0:
            raise ValueError(f"min_free_mb must be zero or more, got {self.min_free_mb}")
        names = [c.source_name for c in self.connectors]
        if len(set(names)) != len(names):
            raise ValueError(f"connectors: source names must differ, got {names}")

    @property
    def state_dir(self) -> Path:
        """The data directory, resolved."""
        return (self.data_dir or data_home()).expanduser().absolute()

    @property
    def caches(self) -> Path:
        """The cache directory, resolved."""
        return (self.cache_dir or data_home()).expanduser().absolute()

    def under_data_dir(self, path: Path) -> Path:
        """``path``, resolved against the data directory when relative."""
        return path if path.is_absolute() else self.state_dir / path


def load_config(path: Path | None) -> DaemonConfig:
    """The configuration in ``path`` (the embedded default when ``None``), validated.

    Raises:
        SchemaError: naming the key and the problem.
    """
    config = DaemonConfig() if path is None else build(DaemonConfig, load_yaml_file(path), "config")
    if config.policy is not None:
        config = replace(config, policy=_existing_file(config.policy, path, "config.policy"))
    if config.model.corpus_files:
        corpus = tuple(_existing_file(file, path, f"config.model.corpus_files[{index}]")
                       for index, file in enumerate(config.model.corpus_files))
        config = replace(config, model=replace(config.model, corpus_files=corpus))
    token = os.environ.get(TOKEN_ENV)
    if token:
        config = replace(config, api=replace(config.api, token=token))
    if not config.api.token and not _is_loopback(config.api.host):
        raise SchemaError(
            f"config.api.host: binding {config.api.host!r} exposes the API beyond this "
            f"machine; set api.token (or {TOKEN_ENV}) first"
        )
    return config


def _existing_file(file: Path, config_path: Path | None, key: str) -> Path:
    """``file`` resolved against the config file's directory; ``SchemaError`` naming
    ``key`` when there is no such file."""
    if not file.is_absolute() and config_path is not None:
        file = config_path.parent / file
    if not file.is_file():
        raise SchemaError(f"{key}: no such file {file}")
    return file


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
