"""The service's Prometheus metrics, in a registry of its own (so tests can build many apps).

Named by Prometheus' conventions: counters end in `_total`, units are in the name (`_seconds`,
`_records`), shares are `_ratio`, and rates are left to PromQL (`rate(..._total[1m])`). Counts
that the migration keeps itself (the backfill's durable checkpoint, mirrored reads compared)
are exported as counters read at scrape time. The list, with what each means, is in
docs/metrics.md; a test checks that the two agree.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

disable_created_metrics()  # type: ignore[no-untyped-call]  # `_created` series: no use here

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


Labelled = Callable[[], dict[tuple[str, ...], float]]


class CountersRead(Collector):
    """Counters whose value the migration holds (read when scraped, never set by hand)."""

    def __init__(self) -> None:
        self.sources: dict[str, tuple[str, tuple[str, ...], Labelled]] = {}

    def add(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        self.sources[name] = (documentation, (), lambda: {(): read()})

    def add_labelled(
        self, name: str, documentation: str, labels: tuple[str, ...], read: Labelled
    ) -> None:
        self.sources[name] = (documentation, labels, read)

    def collect(self) -> Iterator[Metric]:
        for name, (documentation, labels, read) in self.sources.items():
            family = CounterMetricFamily(name, documentation, labels=labels)
            for values, value in read().items():
                family.add_metric(list(values), value)
            yield family


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.latency = Histogram(
            "vecmig_request_duration_seconds",
            "Client request latency through the migration layer, by op and phase",
            ("op", "phase"),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.outcomes = Counter(
            "vecmig_requests",
            "Client requests by op, phase and outcome (ok, fail, info, invalid)",
            ("op", "phase", "outcome"),
            registry=r,
        )
        self.writes = Counter(
            "vecmig_writes",
            "Acknowledged client writes by op and result (applied, superseded)",
            ("op", "result"),
            registry=r,
        )
        self.http_responses = Counter(
            "vecmig_http_responses",
            "HTTP answers by route and status code (5xx: failed or indeterminate ops, and bugs)",
            ("route", "code"),
            registry=r,
        )
        self.fallbacks = Counter(
            "vecmig_read_fallbacks",
            "Reads served by the other side after the reading side failed",
            registry=r,
        )
        self.repairs_queued = Counter(
            "vecmig_repairs_queued", "Failed secondary writes queued for repair", registry=r
        )
        self.secondary_lost = Counter(
            "vecmig_secondary_writes_lost",
            "Failed secondary writes forgotten (the naive strategy keeps no repair log)",
            registry=r,
        )
        self.repair_backlog = Gauge(
            "vecmig_repair_log_entries", "Entries in the durable repair log", registry=r
        )
        self.backfill_batch = Gauge(
            "vecmig_backfill_batch_records",
            "The throttle's current backfill batch size",
            registry=r,
        )
        self.mismatch_ratio = Gauge(
            "vecmig_mirror_mismatch_ratio",
            "Share of mirrored reads that were discrepancies (0 to 1)",
            registry=r,
        )
        self.epoch = Gauge("vecmig_epoch", "The published epoch", registry=r)
        self.phase = Gauge("vecmig_phase", "1 for the published phase", ("phase",), registry=r)
        self.side_up = Gauge(
            "vecmig_side_up", "1 while a side answers its health check", ("side",), registry=r
        )
        self.read_counters = CountersRead()
        r.register(self.read_counters)
