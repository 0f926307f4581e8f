"""What ``factsync bench load`` feeds: the settings of a run and its planned changes.

``changes`` fact changes fall on ``facts`` (subject, relation) pairs at a steady rate for
``seconds``; every change states a new object for its fact, so later ones supersede
earlier ones, and every fact is fed at least once. Each fact keeps one channel: a file in
the watched directory or ``POST /facts``.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

CHANNELS = ("file", "api", "both")
RELATIONS = ("P27", "P19", "P103", "P1412", "P17", "P127")
SYLLABLES = ("ka", "lo", "ver", "dan", "mi", "tor", "sel", "qua", "ben", "ris")
OBJECT_NAMES = 40
"""Objects each change picks from (never the fact's current one)."""
FILE_GAP_SECONDS = 2.0
"""A file-fed fact changes at most this often, 4x the connector's 0.5 s debounce, so each
file state is normally read before the next replaces it."""
ENDPOINTS = ("/healthz", "/status", "/facts")
"""What the prober times during a run, in turn."""
Key = tuple[str, str]


@dataclass(frozen=True)
class LoadSettings:
    """One load run.

    Attributes:
        changes: fact changes to feed.
        seconds: how long the feed lasts (steady rate).
        facts: distinct (subject, relation) pairs the changes fall on; each is fed at
            least once, so ``changes >= facts``.
        channel: ``file``, ``api`` or ``both`` (each fact keeps one channel).
        drain_seconds: how long to wait after the feed for the queue to empty.
        probe_rate: API probes per second, cycling through ``ENDPOINTS``.
        every: seconds between rows of the queue-depth table.
        seed: of the feed and the probes' subjects.
    """

    changes: int = 10_000
    seconds: float = 180.0
    facts: int = 2_000
    channel: str = "both"
    drain_seconds: float = 600.0
    probe_rate: float = 10.0
    every: float = 15.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.channel not in CHANNELS:
            raise ValueError(f"channel must be one of {', '.join(CHANNELS)}, got {self.channel!r}")
        if not 1 <= self.facts <= self.changes:
            raise ValueError(f"need 1 <= facts <= changes, got facts={self.facts}, "
                             f"changes={self.changes}")
        for name in ("seconds", "probe_rate", "every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.drain_seconds < 0:
            raise ValueError(f"drain_seconds must not be negative, got {self.drain_seconds}")


@dataclass(frozen=True)
class FedChange:
    """One planned change: when (seconds after the feed starts), what, and how."""

    at: float
    subject: str
    relation: str
    object: str
    channel: str


def _name(number: int, width: int) -> str:
    """A pronounceable name, unique per ``number``: one syllable per decimal digit."""
    return "".join(SYLLABLES[(int(d) + 3 * i) % 10] for i, d in enumerate(f"{number:0{width}d}"))


def fact_keys(count: int) -> list[Key]:
    """``count`` distinct (subject, relation) pairs, two relations per subject."""
    width = max(4, len(str(count)))
    return [(f"{_name(i // 2, width).capitalize()} {_name(i // 2 + 7, 3).capitalize()}",
             RELATIONS[(i // 2 + i % 2) % len(RELATIONS)]) for i in range(count)]


def plan_feed(settings: LoadSettings) -> list[FedChange]:
    """The changes to feed, in time order; every fact is fed at least once."""
    rng = random.Random(settings.seed)
    keys = fact_keys(settings.facts)
    objects = [f"{_name(j, 2).capitalize()}ria" for j in range(OBJECT_NAMES)]
    channel = {key: settings.channel if settings.channel != "both" else ("file", "api")[i % 2]
               for i, key in enumerate(keys)}
    unfed, current, last_at = list(keys), {}, {}
    rng.shuffle(unfed)
    waiting = set(unfed)
    plan = []
    for n in range(settings.changes):
        at = n * settings.seconds / settings.changes
        for _ in range(50):  # look for a fact free to change now
            # Unfed facts are drawn often enough that each is fed by the end.
            first = rng.random() < len(waiting) / (settings.changes - n)
            key = unfed[-1] if first else rng.choice(keys)
            if channel[key] == "api" or at - last_at.get(key, -math.inf) >= FILE_GAP_SECONDS:
                break
        if key in waiting:
            unfed.remove(key)
            waiting.discard(key)
        current[key] = rng.choice([o for o in objects if o != current.get(key)])
        last_at[key] = at
        plan.append(FedChange(at, key[0], key[1], current[key], channel[key]))
    return plan
