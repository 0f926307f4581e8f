"""Telling serving engines that the live version changed.

``RuntimeLoraNotifier`` uses a serving engine's runtime LoRA endpoints, vLLM's (the
server must run with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``) or SGLang's (started
with ``--enable-lora``, ``--max-lora-rank`` and ``--lora-target-modules``): it loads the
new version's adapter under the name ``<prefix>-<version>`` and then unloads the
previous one, so requests always find an adapter. ``WebhookServingNotifier`` posts the
change to any URL.
"""

from __future__ import annotations

import logging
import urllib.error
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from factsync.http_client import post_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LiveChange:
    """A move of the live pointer, as serving engines need to hear of it.

    Attributes:
        event: ``promoted``, ``rolled_back`` or ``started``.
        version: the new live version.
        previous: the version the engine was told about before, if any.
        base: the model the adapter applies to: the base model's directory, or a fold's
            checkpoint.
        previous_base: the base the engine was told about before, if any.
        adapter: the new version's LoRA adapter directory (``None`` for the base model).
        merged: its merged checkpoint directory, when one is exported.
    """

    event: str
    version: str
    previous: str | None
    base: str
    adapter: Path | None
    merged: Path | None = None
    previous_base: str | None = None


class ServingNotifier(Protocol):
    """A serving engine to keep on the live version."""

    name: str

    def notify(self, change: LiveChange) -> None:
        """Switch the engine to ``change.version``; raise on failure."""


@dataclass(frozen=True)
class LoraApi:
    """Where a serving engine takes adapters at run time.

    Attributes:
        engine: the engine's name, also the notifier's.
        load_path: POST ``{"lora_name", "lora_path"}`` here to load an adapter.
        unload_path: POST ``{"lora_name"}`` here to unload one.
    """

    engine: str
    load_path: str
    unload_path: str


VLLM = LoraApi("vllm", "/v1/load_lora_adapter", "/v1/unload_lora_adapter")
SGLANG = LoraApi("sglang", "/load_lora_adapter", "/unload_lora_adapter")


class ServingBaseChanged(RuntimeError):
    """The new adapter applies to another base than the one the engine was started on."""


class RuntimeLoraNotifier:
    """Loads and unloads LoRA adapters through a serving engine's runtime endpoints.

    An engine's base model is fixed when it starts, so after a fold (or a rollback across
    one) the notifier raises ``ServingBaseChanged`` naming the base to restart it on,
    instead of loading an adapter made for that base. Once restarted, the next change
    loads its adapter; unloading an adapter the restarted engine never had is no error.
    """

    def __init__(self, api: LoraApi, url: str, *, prefix: str = "factsync",
                 token: str | None = None, timeout: float = 30.0) -> None:
        self.api = api
        self.name = api.engine
        self.url = url.rstrip("/")
        self.prefix = prefix
        self.token = token
        self.timeout = timeout

    def adapter_name(self, version: str) -> str:
        """The name a version's adapter is served under."""
        return f"{self.prefix}-{version}"

    def notify(self, change: LiveChange) -> None:
        """Load the new adapter, then unload the previous one."""
        if change.previous_base is not None and change.base != change.previous_base:
            raise ServingBaseChanged(
                f"version {change.version} applies to the base {change.base}, not "
                f"{change.previous_base}: restart {self.name} on {change.base}")
        if change.adapter is not None:
            post_json(f"{self.url}{self.api.load_path}",
                      {"lora_name": self.adapter_name(change.version),
                       "lora_path": str(change.adapter)},
                      timeout=self.timeout, token=self.token)
        if change.previous is not None and change.previous != change.version:
            try:
                post_json(f"{self.url}{self.api.unload_path}",
                          {"lora_name": self.adapter_name(change.previous)},
                          timeout=self.timeout, token=self.token)
            except urllib.error.HTTPError as exc:
                if exc.code not in (400, 404):
                    raise
                log.info("%s did not have %s loaded (%s); nothing to unload", self.name,
                         self.adapter_name(change.previous), exc.code)


class WebhookServingNotifier:
    """Posts ``{"event", "version", "previous", "base", "adapter", "merged"}`` to a URL."""

    name = "serving-webhook"

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        self.url = url
        self.timeout = timeout

    def notify(self, change: LiveChange) -> None:
        """Deliver the change."""
        post_json(self.url, {
            "event": change.event,
            "version": change.version,
            "previous": change.previous,
            "base": change.base,
            "adapter": str(change.adapter) if change.adapter else None,
            "merged": str(change.merged) if change.merged else None,
        }, timeout=self.timeout)
