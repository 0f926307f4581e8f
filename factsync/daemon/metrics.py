"""The daemon's Prometheus metrics, on a registry passed in (a fresh one per test)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from factsync.connectors.base import ConnectorHealth
from factsync.executors.local import FleetStatus
from factsync.kpis.report import CANDIDATE_METRICS, KpiReport, KpiValues
from factsync.store.records import Version

STAGE_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1200, 3600)
"""Seconds; edit stages on CPU run from seconds to tens of minutes."""


class Metrics:
    """Every metric factsync exports (prefix ``factsync_``, base units)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.facts_ingested = Counter(
            "factsync_facts_ingested_total", "Valid fact rows received, by source.",
            ["source"], registry=registry)
        self.fact_changes = Counter(
            "factsync_fact_changes_total", "Rows that changed a desired fact, by source.",
            ["source"], registry=registry)
        self.facts_quarantined = Counter(
            "factsync_facts_quarantined_total", "Rows quarantined for the first time, by source.",
            ["source"], registry=registry)
        self.quarantine_size = Gauge(
            "factsync_quarantine_entries", "Entries in quarantine.", registry=registry)
        self.pending_changes = Gauge(
            "factsync_pending_changes", "Fact changes not yet applied or closed.",
            registry=registry)
        self.jobs = Counter(
            "factsync_jobs_total", "Jobs finished, by outcome.", ["outcome"], registry=registry)
        self.stage_seconds = Histogram(
            "factsync_stage_duration_seconds", "Time spent in each job stage.", ["stage"],
            buckets=STAGE_BUCKETS, registry=registry)
        self.ime_iterations = Histogram(
            "factsync_ime_iterations", "IME passes an edit job ran.",
            buckets=(1, 2, 3, 4, 5, 8), registry=registry)
        self.candidate_kpi = Gauge(
            "factsync_candidate_kpi", "KPI values of the last candidate.", ["metric"],
            registry=registry)
        self.live_kpi = Gauge(
            "factsync_live_kpi", "KPI values of the live version at its promotion.", ["metric"],
            registry=registry)
        self.gate_failures = Counter(
            "factsync_gate_failures_total", "Blocking gate failures, by metric.", ["metric"],
            registry=registry)
        self.promotions = Counter(
            "factsync_promotions_total", "Versions promoted.", registry=registry)
        self.live_version = Info(
            "factsync_live_version", "The live version.", registry=registry)
        self.live_version_seq = Gauge(
            "factsync_live_version_sequence", "Sequence number of the live version.",
            registry=registry)
        self.last_sync = Gauge(
            "factsync_last_successful_sync_timestamp_seconds",
            "When the live version last matched every fact ready to apply.", registry=registry)
        self.model_load_seconds = Gauge(
            "factsync_model_load_seconds", "Time to load the base model and rebuild the live "
            "version at start-up.", registry=registry)
        self.rollbacks = Counter(
            "factsync_rollbacks_total", "Rollbacks of the live version, by trigger.",
            ["trigger"], registry=registry)
        self.monitor_checks = Counter(
            "factsync_monitor_checks_total", "Monitor checks of the live version, by outcome.",
            ["outcome"], registry=registry)
        self.facts_restated = Counter(
            "factsync_facts_restated_total", "Applied facts the monitor found no longer "
            "stated and queued to be edited again (monitor.restate_worn).", registry=registry)
        self.monitor_kpi = Gauge(
            "factsync_monitor_kpi", "KPI values of the live version at the last monitor check.",
            ["metric"], registry=registry)
        self.alerts = Counter(
            "factsync_alerts_total", "Alerts raised, by alert name.", ["alert"],
            registry=registry)
        self.alert_failures = Counter(
            "factsync_alert_delivery_failures_total",
            "Alert deliveries that failed after every retry, by notifier.", ["notifier"],
            registry=registry)
        self.serving_failures = Counter(
            "factsync_serving_notify_failures_total",
            "Serving-engine notifications that failed after every retry, by notifier.",
            ["notifier"], registry=registry)
        self.exports_diverged = Counter(
            "factsync_exports_diverged_total",
            "Exports held back because, loaded as a serving engine loads them, they did not "
            "answer like the live model; by kind.", ["kind"], registry=registry)
        self.export_agreement = Gauge(
            "factsync_export_agreement",
            "Share of probes the last verified export answered like the live model, by kind.",
            ["kind"], registry=registry)
        self.connector_up = Gauge(
            "factsync_connector_up", "1 when the connector's last read succeeded.",
            ["connector"], registry=registry)
        self.connector_lag = Gauge(
            "factsync_connector_lag_seconds", "Seconds since the connector last read its "
            "source successfully.", ["connector"], registry=registry)
        self._connector_health: dict[str, ConnectorHealth] = {}
        registry.register(_ConnectorErrors(self._connector_health))
        self.data_dir_writable = Gauge(
            "factsync_data_dir_writable", "1 when the data directory took a write at the last "
            "check and has the configured free space.", registry=registry)
        self.data_dir_free_bytes = Gauge(
            "factsync_data_dir_free_bytes", "Free space under the data directory.",
            registry=registry)
        self.model_dir_present = Gauge(
            "factsync_model_dir_present", "1 when the base model's directory still holds its "
            "config and safetensors weights (needed to start again); NaN until the model has "
            "loaded.", registry=registry)
        self.up = Gauge("factsync_up", "1 while the daemon runs.", registry=registry)
        for metric in CANDIDATE_METRICS:  # so every KPI series exists from the first scrape
            self.candidate_kpi.labels(metric.value)
            self.live_kpi.labels(metric.value)
            self.gate_failures.labels(metric.value)
        for outcome in ("promoted", "rejected", "failed"):
            self.jobs.labels(outcome)
        for trigger in ("monitor", "operator"):
            self.rollbacks.labels(trigger)
        for outcome in ("ok", "failing", "error"):
            self.monitor_checks.labels(outcome)

    def watch_connector(self, name: str, health: ConnectorHealth) -> None:
        """Export a connector's health: up, lag and errors by kind, read at each scrape."""
        self.connector_up.labels(name).set_function(lambda: float(health.up))
        self.connector_lag.labels(name).set_function(health.lag_seconds)
        self._connector_health[name] = health

    def watch_fleet(self, status: Callable[[], FleetStatus]) -> None:
        """Export an executor's workers (``factsync_executor_*``), read at each scrape."""
        self.registry.register(_Fleet(status))

    def record_live(self, version: Version) -> None:
        """Show ``version`` as the live one, with the KPIs it was promoted on."""
        self.live_version.info({"id": version.id, "parent": version.parent_id or ""})
        self.live_version_seq.set(version.seq)
        if version.report:
            self.record_kpis(self.live_kpi, KpiReport.candidate_values(version.report))

    def record_kpis(self, gauge: Gauge, kpis: KpiValues) -> None:
        """Set ``gauge`` from a candidate's values; unmeasured KPIs become NaN."""
        for metric in CANDIDATE_METRICS:
            value = kpis.get(metric)
            gauge.labels(metric.value).set(float("nan") if value is None else value)


class _ConnectorErrors(Collector):
    """``factsync_connector_errors_total{connector, kind}`` from the connectors' health."""

    def __init__(self, health: dict[str, ConnectorHealth]) -> None:
        self._health = health

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "factsync_connector_errors", "Failed reads of a source, by connector and kind.",
            labels=["connector", "kind"])
        for name, health in sorted(self._health.items()):
            for kind, count in sorted(health.errors.items()):
                family.add_metric([name, kind], count)
        yield family


class _Fleet(Collector):
    """The executor's live, busy and lost workers."""

    def __init__(self, status: Callable[[], FleetStatus]) -> None:
        self._status = status

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        status = self._status()
        yield GaugeMetricFamily("factsync_executor_workers",
                                "Executor workers alive (Ray actors holding the model).",
                                value=status.workers)
        yield GaugeMetricFamily("factsync_executor_busy_workers",
                                "Executor workers running a share of a job now.",
                                value=status.busy)
        yield CounterMetricFamily("factsync_executor_worker_failures",
                                  "Executor workers lost: died, hung past the timeout, or "
                                  "could not follow the live version.", value=status.failures)
