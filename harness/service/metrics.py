"""The service's Prometheus metrics, in a registry of its own (so tests can build many apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.latency = Histogram(
            "vecmig_request_seconds",
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
            "vecmig_repair_backlog", "Entries in the durable repair log", registry=r
        )
        self.backfill_copied = Gauge(
            "vecmig_backfill_copied",
            "Records the backfill has copied (durable checkpoint)",
            registry=r,
        )
        self.backfill_rate = Gauge(
            "vecmig_backfill_records_per_second",
            "Backfill copy rate over the last interval",
            registry=r,
        )
        self.backfill_batch = Gauge(
            "vecmig_backfill_batch_size", "The throttle's current backfill batch size", registry=r
        )
        self.mirrored = Gauge(
            "vecmig_mirrored_reads_compared",
            "Mirrored reads compared since this process started",
            registry=r,
        )
        self.mismatch_rate = Gauge(
            "vecmig_mirror_mismatch_rate",
            "Share of mirrored reads that were discrepancies",
            registry=r,
        )
        self.epoch = Gauge("vecmig_epoch", "The published epoch", registry=r)
        self.phase = Gauge("vecmig_phase", "1 for the published phase", ("phase",), registry=r)
        self.crashes = Gauge(
            "vecmig_operation_crashes", "Operations that raised a non-side error (bugs)", registry=r
        )
