"""``factsync bench load``: a steady feed of fact changes through a real daemon.

A daemon runs in a subprocess on a fresh data directory (sharing the model and
statistics caches) and gets the changes ``plan_feed`` planned, through rewritten .jsonl
files in the watched directory and ``POST /facts`` batches. Meanwhile a prober thread
times the read endpoints at a fixed rate and a sampler thread records queue depth
(``GET /status``) and the daemon's RSS once a second. After the feed the run waits for
the queue to drain, stops the daemon and reads its state store to account for every fed
change.

The file channel writes facts the way the file connector expects a directory to look:
each fact lives in one shard file, rewritten whole (temporary file, then rename) when any
of its facts changes, so a full re-scan re-reads the current state rather than history.
A file states the latest value, not a log: a state overwritten before the daemon read it
is never recorded, and is counted as such rather than as a drop. API pushes are a log:
every pushed transition must be recorded.
"""

from __future__ import annotations

import bisect
import json
import logging
import random
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from factsync.bench.live_daemon import DaemonProcess
from factsync.bench.load_plan import ENDPOINTS, FedChange, Key, LoadSettings, plan_feed
from factsync.bench.load_report import (
    LoadReport,
    Sample,
    check_changes,
    desired_problems,
    job_summary,
    latency_rows,
    latest_changes,
    left_pending,
    throughput_row,
    timeline,
)
from factsync.daemon.service import STATE_FILE
from factsync.durable import write_text
from factsync.store.records import JOB_OUTCOMES
from factsync.store.store import StateStore

log = logging.getLogger(__name__)
BENCH_POLICY = {"name": "load-bench", "batch": {"max_facts": 10, "coalesce_seconds": 5.0}}
"""The shipped default policy (gates, IME, NME) with its batch limits spelled out: jobs of
at most 10 facts (as shipped), and a change waits 5 s (shipped: 2 s) for later changes to
the same fact, so a fact changing every few seconds is coalesced rather than re-edited."""
TICK_SECONDS = 1.0
"""The feed sends what is due once a second: one push and the shard files it touched."""
KEYS_PER_FILE = 25
PROBE_TIMEOUT = 30.0
PROGRESS_SECONDS = 10.0


class _Prober(threading.Thread):
    """Times GETs of the read endpoints at a fixed rate (one at a time, no bursts)."""

    def __init__(self, base_url: str, subjects: list[str], rate: float, seed: int) -> None:
        super().__init__(name="load-prober", daemon=True)
        self.samples: list[tuple[str, float, float, str | None]] = []
        self._base, self._subjects, self._period = base_url, subjects, 1.0 / rate
        self._rng = random.Random(seed + 1)
        self.halt = threading.Event()

    def run(self) -> None:
        next_at, turn = time.monotonic(), 0
        while not self.halt.is_set():
            endpoint = ENDPOINTS[turn % len(ENDPOINTS)]
            turn += 1
            path = endpoint if endpoint != "/facts" else (
                "/facts?subject=" + urllib.parse.quote(self._rng.choice(self._subjects)))
            at = time.time()
            seconds, error = _timed_get(self._base + path)
            self.samples.append((endpoint, at, seconds, error))
            next_at += self._period
            if next_at > time.monotonic():
                self.halt.wait(next_at - time.monotonic())
            else:
                next_at = time.monotonic()  # fell behind: carry on, do not burst


class _Sampler(threading.Thread):
    """Once a second: the daemon's RSS and its ``GET /status`` queue depth."""

    def __init__(self, daemon: DaemonProcess) -> None:
        super().__init__(name="load-sampler", daemon=True)
        self.samples: list[Sample] = []
        self._daemon = daemon
        self.halt = threading.Event()

    def run(self) -> None:
        while True:
            try:
                status = self._daemon.get("/status")
                depth = status["pending_changes"]
                finished = sum(n for s, n in status["jobs"].items() if s in JOB_OUTCOMES)
            except (OSError, RuntimeError, ValueError):
                depth = finished = None
            self.samples.append(Sample(time.time(), _rss_mb(self._daemon), depth, finished))
            if self.halt.wait(1.0):
                return


def run_load(
    settings: LoadSettings,
    make_daemon: Callable[[Path], DaemonProcess],
    *,
    data_dir: Path | None = None,
    ready_timeout: float = 1800,
) -> LoadReport:
    """Feed a daemon from ``make_daemon(data_dir)`` and account for every change.

    ``data_dir`` is kept afterwards when given; otherwise a temporary one is used.
    """
    if data_dir is not None:
        data_dir.mkdir(parents=True, exist_ok=True)
        return _run(settings, make_daemon(data_dir), data_dir, ready_timeout)
    with tempfile.TemporaryDirectory(prefix="factsync-load-bench-") as scratch:
        return _run(settings, make_daemon(Path(scratch)), Path(scratch), ready_timeout)


def _run(settings: LoadSettings, daemon: DaemonProcess, data_dir: Path,
         ready_timeout: float) -> LoadReport:
    plan = plan_feed(settings)
    last = {(c.subject, c.relation): c.object for c in plan}
    sampler = _Sampler(daemon)
    prober = _Prober(f"http://127.0.0.1:{daemon.api_port}", sorted({s for s, _ in last}),
                     settings.probe_rate, settings.seed)
    try:
        log.info("starting the daemon in %s", data_dir)
        started = time.monotonic()
        daemon.start(ready_timeout=ready_timeout)
        startup = time.monotonic() - started
        log.info("daemon ready after %.1f s; feeding %d changes over %d facts in %.0f s (%s)",
                 startup, len(plan), len(last), settings.seconds, settings.channel)
        sampler.start()
        prober.start()
        feed = _feed(daemon, plan, sampler, prober)
        drained = _drain(daemon, last, settings.drain_seconds, sampler)
        end = time.time()
        facts = daemon.get("/facts")
        quarantined = daemon.get("/status")["quarantined"]
    finally:
        for thread in (prober, sampler):
            thread.halt.set()
            if thread.is_alive():
                thread.join(PROBE_TIMEOUT)  # before the daemon stops: no probe sees it go
        _stop(daemon)
    store = StateStore(data_dir / STATE_FILE)
    try:
        changes = store.changes(limit=10**9)
        jobs = {j.id: j for j in store.jobs(limit=10**9)}
    finally:
        store.close()
    problems, overwritten = check_changes(plan, changes)
    desired = desired_problems(facts, last)
    problems = feed["errors"] + desired + problems
    if quarantined:
        problems.append(f"{quarantined} fed row(s) were quarantined")
    notes = [f"probe {e} failed: {s}" for e, _, _, s in prober.samples if s][:5]
    if not drained:
        notes.append(f"the queue did not drain within {settings.drain_seconds:.0f} s")
    left = {c.id: left_pending(c, jobs) for c in changes}
    rss = [s for s in sampler.samples if s.rss_mb is not None]
    peak = max(rss, key=lambda s: s.rss_mb, default=None)
    begin = feed["begin"]
    return LoadReport(
        settings=dict(vars(settings)), startup_seconds=startup,
        feed_seconds=feed["end"] - begin, run_seconds=end - begin, drained=drained,
        fed={"changes": len(plan), "facts": len(last),
             "by_file": sum(c.channel == "file" for c in plan),
             "by_api": sum(c.channel == "api" for c in plan), "behind_s": feed["behind"],
             "push_rows_per_s": sum(n for _, _, n in feed["pushes"])
             / max(sum(s for _, s, _ in feed["pushes"]), 1e-9)},
        recorded=len(changes), file_overwritten=overwritten,
        throughput=[throughput_row(name, feed, changes, left, until)
                    for name, until in (("feed", feed["end"]), ("feed+drain", end))],
        jobs=job_summary(changes, jobs),
        timeline=timeline(feed, changes, left, sampler.samples, settings.every, end),
        rss_mb={"start": rss[0].rss_mb if rss else None, "peak": peak and peak.rss_mb,
                "peak_at_s": peak and peak.at - begin, "end": rss[-1].rss_mb if rss else None},
        latency=latency_rows(prober.samples, feed["pushes"], feed["end"]),
        final_states=dict(Counter(c.state for c in latest_changes(changes).values())),
        desired_ok=len(last) - sum(p.startswith("desired") for p in desired),
        problems=problems, notes=notes,
    )


def _feed(daemon: DaemonProcess, plan: list[FedChange], sampler: _Sampler,
          prober: _Prober) -> dict:
    """Send ``plan`` on schedule: when each tick went out, push timings, errors."""
    file_keys = sorted({(c.subject, c.relation) for c in plan if c.channel == "file"})
    shard_of = {key: j // KEYS_PER_FILE for j, key in enumerate(file_keys)}
    shards: dict[int, dict[Key, str]] = {}
    times = [c.at for c in plan]
    sent: list[tuple[float, int]] = []
    pushes: list[tuple[float, float, int]] = []  # (when, seconds, rows)
    errors: list[str] = []
    start, begin, index, tick, behind = time.monotonic(), time.time(), 0, 0, 0.0
    while index < len(plan):
        tick += 1
        delay = start + tick * TICK_SECONDS - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        behind = max(behind, -delay)
        due = plan[index:bisect.bisect_left(times, tick * TICK_SECONDS)]
        index += len(due)
        rows = [{"subject": c.subject, "relation": c.relation, "object": c.object}
                for c in due if c.channel == "api"]
        if rows:
            at, clock = time.time(), time.perf_counter()
            status, body = daemon.post("/facts", {"facts": rows})
            pushes.append((at, time.perf_counter() - clock, len(rows)))
            if status != 202 or body.get("accepted") != len(rows):
                errors.append(f"push of {len(rows)} row(s) answered {status}: {body}")
        touched = set()
        for change in (c for c in due if c.channel == "file"):
            key = (change.subject, change.relation)
            shards.setdefault(shard_of[key], {})[key] = change.object
            touched.add(shard_of[key])
        for shard in sorted(touched):
            _write_shard(daemon.facts_dir, shard, shards[shard])
        sent.append((time.time(), index))
        if tick % round(PROGRESS_SECONDS / TICK_SECONDS) == 0:
            _progress(f"feeding {tick * TICK_SECONDS:.0f} s: {index}/{len(plan)} sent",
                      sampler, prober)
    return {"begin": begin, "end": time.time(), "sent": sent, "pushes": pushes,
            "errors": errors, "behind": behind}


def _write_shard(directory: Path, shard: int, facts: dict[Key, str]) -> None:
    """Rewrite one shard file whole, atomically: the daemon never reads half of one."""
    write_text(directory / f"load-{shard:04d}.jsonl",
               "".join(json.dumps({"subject": s, "relation": r, "object": o}) + "\n"
                       for (s, r), o in facts.items()))


def _drain(daemon: DaemonProcess, last: dict[Key, str], limit: float, sampler: _Sampler) -> bool:
    """Wait until no change is pending or queued and the store holds every last value."""
    started = time.monotonic()
    next_note = started + PROGRESS_SECONDS
    while True:
        depth = daemon.get("/status")["pending_changes"]
        if depth == 0 and not desired_problems(daemon.get("/facts"), last):
            return True
        if time.monotonic() - started >= limit:
            return False
        if time.monotonic() >= next_note:
            next_note += PROGRESS_SECONDS
            _progress(f"draining {time.monotonic() - started:.0f}/{limit:.0f} s", sampler, None)
        time.sleep(2.0)


def _progress(what: str, sampler: _Sampler, prober: _Prober | None) -> None:
    sample = sampler.samples[-1] if sampler.samples else Sample(0.0, None, None, None)
    probes = "" if prober is None else (
        f", probes {len(prober.samples)} ({sum(1 for p in prober.samples if p[3])} failed)")
    log.info("%s; queue depth %s, jobs finished %s, daemon RSS %s MB%s", what, sample.depth,
             sample.jobs_finished, sample.rss_mb and round(sample.rss_mb), probes)


def _stop(daemon: DaemonProcess) -> None:
    if daemon.process is None or daemon.process.poll() is not None:
        return
    try:
        daemon.stop(timeout=120)
    except subprocess.TimeoutExpired:
        daemon.process.kill()
        daemon.process.wait(timeout=60)


def _timed_get(url: str) -> tuple[float, str | None]:
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT) as response:
            response.read()
            error = None if response.status == 200 else f"status {response.status}"
    except (urllib.error.URLError, OSError) as exc:  # HTTPError is a URLError
        error = f"{type(exc).__name__}: {exc}"
    return time.perf_counter() - started, error


def _rss_mb(daemon: DaemonProcess) -> float | None:
    if daemon.process is None:
        return None
    try:
        with open(f"/proc/{daemon.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024  # kB -> MB
    except OSError:
        pass
    return None
