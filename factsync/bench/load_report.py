"""What ``factsync bench load`` measured, and the check that nothing was dropped.

Every figure is rebuilt from the daemon's state store after the run (when each change
was recorded, went into a job and closed) and from the samples taken during it (queue
depth, RSS, probe latencies), then printed as plain-text tables.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from dataclasses import asdict, dataclass, field

from factsync.bench.load_plan import ENDPOINTS, FedChange, Key
from factsync.store.records import (
    CHANGE_APPLIED,
    CHANGE_PENDING,
    CHANGE_QUEUED,
    CHANGE_SUPERSEDED,
    JOB_OUTCOMES,
    FactChange,
)


@dataclass(frozen=True)
class Sample:
    """The daemon once a second: queue depth (pending + queued changes) and memory."""

    at: float
    rss_mb: float | None
    depth: int | None
    jobs_finished: int | None


@dataclass(frozen=True)
class LatencyRow:
    """Response times of one endpoint in one phase (milliseconds)."""

    endpoint: str
    phase: str
    requests: int
    failed: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float


@dataclass(frozen=True)
class TimelineRow:
    """The queue at one moment (``seconds`` after the feed started), from the store."""

    seconds: float
    fed: int
    recorded: int
    pending: int
    queued: int
    applied: int
    depth: int | None
    rss_mb: float | None


@dataclass
class LoadReport:
    """Everything a load run measured; ``problems`` empty means nothing was dropped."""

    settings: dict
    startup_seconds: float
    feed_seconds: float
    run_seconds: float
    drained: bool
    fed: dict
    recorded: int
    file_overwritten: int
    throughput: list[dict]
    jobs: dict
    timeline: list[TimelineRow]
    rss_mb: dict
    latency: list[LatencyRow]
    final_states: dict
    desired_ok: int
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def desired_problems(facts: list[dict], last: dict[Key, str]) -> list[str]:
    """Fed facts whose desired object in ``GET /facts`` is not the last value fed."""
    held = {(f["subject"], f["relation"]): f for f in facts}
    problems = [f"desired {s} {r}: fed last {o!r}, the store holds "
                f"{repr(held[(s, r)]['object']) if (s, r) in held else 'nothing'}"
                for (s, r), o in last.items()
                if (s, r) not in held or held[(s, r)]["object"] != o or held[(s, r)]["deleted"]]
    return problems + [f"the store holds {k}, which was never fed" for k in held if k not in last]


def check_changes(plan: list[FedChange], changes: list[FactChange]) -> tuple[list[str], int]:
    """Recorded changes against fed ones, per fact; problems and file states never read."""
    fed: dict[Key, list[FedChange]] = {}
    for change in plan:
        fed.setdefault((change.subject, change.relation), []).append(change)
    got: dict[Key, list[FactChange]] = {}
    for change in changes:
        got.setdefault((change.subject, change.relation), []).append(change)
    problems, overwritten = [], 0
    for key, sent in fed.items():
        objects, recorded = [c.object for c in sent], [c.object for c in got.get(key, [])]
        if sent[0].channel == "api" and recorded != objects:
            problems.append(f"changes of {key}: pushed {objects}, recorded {recorded}")
        elif sent[0].channel == "file":
            if not recorded or recorded[-1] != objects[-1] or not _subsequence(recorded, objects):
                problems.append(f"changes of {key}: written {objects}, recorded {recorded}")
            overwritten += len(objects) - len(recorded)
        if got.get(key) and got[key][-1].state == CHANGE_SUPERSEDED:
            problems.append(f"the latest change of {key} is superseded")
    problems += [f"{len(v)} change(s) recorded for {k}, never fed" for k, v in got.items()
                 if k not in fed]
    return problems, overwritten


def _subsequence(part: list[str], whole: list[str]) -> bool:
    items = iter(whole)
    return all(any(x == y for y in items) for x in part)


def latest_changes(changes: list[FactChange]) -> dict[Key, FactChange]:
    """Each fact's latest change (``changes`` in id order)."""
    return {(c.subject, c.relation): c for c in changes}


def left_pending(change: FactChange, jobs: dict) -> float | None:
    """When ``change`` left pending: its job's creation, or its closing; None if pending.

    A change retried after a rejection counts from its retry job, a little late.
    """
    if change.state == CHANGE_PENDING:
        return None
    if change.job_id is not None:
        return jobs[change.job_id].created_at
    return change.changed_at


def _closed_at(change: FactChange) -> float | None:
    if change.state in (CHANGE_PENDING, CHANGE_QUEUED):
        return None
    return change.changed_at


def throughput_row(name: str, feed: dict, changes: list[FactChange], left: dict,
                until: float) -> dict:
    """Changes fed, recorded and taken out of pending from the feed's start to ``until``."""
    seconds = until - feed["begin"]
    out = [c for c in changes if left[c.id] is not None and left[c.id] <= until]
    fed = next((n for at, n in reversed(feed["sent"]) if at <= until), 0)
    return {
        "window": name, "seconds": seconds, "fed_per_s": fed / seconds,
        "recorded_per_s": sum(c.received_at <= until for c in changes) / seconds,
        "left_pending_per_s": len(out) / seconds,
        "superseded": sum(c.state == CHANGE_SUPERSEDED for c in out),
        "into_jobs": sum(c.job_id is not None for c in out),
        "closed_without_edit": sum(c.job_id is None and c.state != CHANGE_SUPERSEDED
                                   for c in out),
        "applied": sum(c.state == CHANGE_APPLIED and c.changed_at <= until for c in out),
    }


def job_summary(changes: list[FactChange], jobs: dict) -> dict:
    """Jobs by state and the facts each finished one held (a retried fact: its last job)."""
    per_job = Counter(c.job_id for c in changes if c.job_id is not None)
    sizes = [per_job[j.id] for j in jobs.values() if j.state in JOB_OUTCOMES]
    return {
        "created": len(jobs), "finished": len(sizes),
        "by_state": dict(Counter(j.state for j in jobs.values())),
        "facts_per_finished_job": {"mean": sum(sizes) / len(sizes) if sizes else 0.0,
                                   "min": min(sizes, default=0), "max": max(sizes, default=0)},
        "changes_into_jobs": sum(per_job.values()),
    }


def timeline(feed: dict, changes: list[FactChange], left: dict, samples: list[Sample],
              every: float, end: float) -> list[TimelineRow]:
    """The queue every ``every`` seconds from the feed's start, rebuilt from the store."""
    begin = feed["begin"]
    moments = [begin + k * every for k in range(int((end - begin) / every) + 1)] + [end]
    closed = {c.id: _closed_at(c) for c in changes}
    sent_at, sample_at = [t for t, _ in feed["sent"]], [s.at for s in samples]
    rows = []
    for moment in moments:
        sent = bisect.bisect_right(sent_at, moment)
        sampled = bisect.bisect_right(sample_at, moment)
        sample = samples[sampled - 1] if sampled else Sample(moment, None, None, None)
        rows.append(TimelineRow(
            seconds=moment - begin,
            fed=feed["sent"][sent - 1][1] if sent else 0,
            recorded=sum(c.received_at <= moment for c in changes),
            pending=sum(c.received_at <= moment and (left[c.id] is None or left[c.id] > moment)
                        for c in changes),
            queued=sum(c.job_id is not None and left[c.id] <= moment
                       and (closed[c.id] is None or closed[c.id] > moment) for c in changes),
            applied=sum(c.state == CHANGE_APPLIED and closed[c.id] <= moment for c in changes),
            depth=sample.depth, rss_mb=sample.rss_mb,
        ))
    return rows


def latency_rows(probes: list, pushes: list[tuple[float, float, int]],
                 feed_end: float) -> list[LatencyRow]:
    """Latency per probed endpoint during the feed and the drain, and of the pushes."""
    rows = []
    for endpoint in ENDPOINTS:
        for phase, during_feed in (("feed", True), ("drain", False)):
            mine = [(s, e) for name, at, s, e in probes
                    if name == endpoint and (at < feed_end) == during_feed]
            rows.append(_latency_row(f"GET {endpoint}", phase, [s for s, _ in mine],
                                     sum(1 for _, e in mine if e)))
    rows.append(_latency_row("POST /facts (feed)", "feed", [s for _, s, _ in pushes], 0))
    return rows


def _latency_row(endpoint: str, phase: str, seconds: list[float], failed: int) -> LatencyRow:
    ordered = sorted(seconds)

    def rank(q: float) -> float:  # nearest rank, in milliseconds
        return 1000 * ordered[max(0, math.ceil(q * len(ordered)) - 1)] if ordered else math.nan

    return LatencyRow(endpoint, phase, len(ordered), failed, rank(0.5), rank(0.95), rank(0.99),
                      rank(1.0))


def format_load_report(report: LoadReport) -> str:
    """The report as plain-text tables."""
    fed, jobs, rss = report.fed, report.jobs, report.rss_mb
    states = ", ".join(f"{k} {v}" for k, v in sorted(jobs["by_state"].items())) or "none"
    per = jobs["facts_per_finished_job"]
    lines = [
        f"load: {fed['changes']} changes over {fed['facts']} facts in "
        f"{report.feed_seconds:.0f} s (file {fed['by_file']}, API {fed['by_api']}; feed at "
        f"most {fed['behind_s']:.1f} s behind schedule); daemon ready after "
        f"{report.startup_seconds:.1f} s; run {report.run_seconds:.0f} s; queue drained: "
        f"{'yes' if report.drained else 'no'}",
        f"POST /facts took rows at {fed['push_rows_per_s']:.0f} per second of request time "
        "(roughly what one pushing client could reach)",
        "",
        "throughput (per second over the window; counts are changes)",
        "window | seconds | fed/s | recorded/s | left pending/s | superseded | into jobs "
        "| closed without edit | applied",
        "------ | ------- | ----- | ---------- | -------------- | ---------- | --------- "
        "| ------------------- | -------",
        *(f"{t['window']} | {t['seconds']:.0f} | {t['fed_per_s']:.1f} | "
          f"{t['recorded_per_s']:.1f} | {t['left_pending_per_s']:.1f} | {t['superseded']} | "
          f"{t['into_jobs']} | {t['closed_without_edit']} | {t['applied']}"
          for t in report.throughput),
        "",
        f"jobs: {jobs['created']} created ({states}); {jobs['finished']} finished, facts per "
        f"finished job mean {per['mean']:.1f} (min {per['min']}, max {per['max']}); "
        f"{jobs['changes_into_jobs']} of {report.recorded} recorded changes went into a job",
        "",
        "queue over time (pending/queued/applied from the store; depth: GET /status "
        "pending_changes sampled; RSS of the daemon)",
        "s | fed | recorded | pending | queued | applied | depth | RSS MB",
        "- | --- | -------- | ------- | ------ | ------- | ----- | ------",
        *(f"{r.seconds:.0f} | {r.fed} | {r.recorded} | {r.pending} | {r.queued} | {r.applied} "
          f"| {'-' if r.depth is None else r.depth} | {_mb(r.rss_mb)}" for r in report.timeline),
        "",
        f"daemon RSS: start {_mb(rss['start'])} MB, peak {_mb(rss['peak'])} MB (at "
        f"{_mb(rss['peak_at_s'])} s), end {_mb(rss['end'])} MB",
        "",
        f"API latency (ms; one probe at a time, {report.settings['probe_rate']:g}/s across "
        "the endpoints, from a separate thread; POST /facts are the feed's pushes)",
        "endpoint | phase | requests | failed | p50 | p95 | p99 | max",
        "-------- | ----- | -------- | ------ | --- | --- | --- | ---",
        *(f"{r.endpoint} | {r.phase} | {r.requests} | {r.failed} | {r.p50_ms:.1f} | "
          f"{r.p95_ms:.1f} | {r.p99_ms:.1f} | {r.max_ms:.1f}" for r in report.latency),
        "",
        f"drop check: {'OK, nothing dropped' if not report.problems else 'FAILED'}",
        f"- desired state equals the last value fed: {report.desired_ok}/{fed['facts']} facts",
        f"- transitions fed {fed['changes']} = recorded {report.recorded} + file states "
        f"overwritten before the daemon read them {report.file_overwritten}"
        + ("" if fed["changes"] == report.recorded + report.file_overwritten else "  MISMATCH"),
        "- latest change per fact: " + ", ".join(
            f"{k} {v}" for k, v in sorted(report.final_states.items())),
    ]
    if report.problems:
        lines.append(f"{len(report.problems)} PROBLEM(S):")
        lines += [f"  {p}" for p in report.problems[:20]]
    lines += [f"note: {n}" for n in report.notes]
    return "\n".join(lines)


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def report_json(report: LoadReport) -> dict:
    """The report as JSON-ready data."""
    return asdict(report)
