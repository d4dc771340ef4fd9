"""The collector's counters, served on /metrics in Prometheus' text format."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "CollectorMetrics"]

# The *_created series double what a scrape carries and tell nothing a counter's reset
# does not; the collector is the only user of prometheus_client in its process.
disable_created_metrics()  # type: ignore[no-untyped-call]


class CollectorMetrics:
    """One registry per collector app (not the process-wide default), so that several
    apps in one process - tests, benchmarks - count apart."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "journey_collector_requests", "HTTP requests answered, by endpoint and status.",
            ["endpoint", "status"], registry=self.registry)
        self.accepted = Counter(
            "journey_collector_accepted_events",
            "Events sent to the ingest topic, by write key.", ["key"], registry=self.registry)
        self.rejected = Counter(
            "journey_collector_rejected_events",
            "Events refused and sent to the DLQ, by write key and DLQ reason.",
            ["key", "reason"], registry=self.registry)
        self.refused = Counter(
            "journey_collector_refused_requests",
            "Requests refused as a whole (unauthorized, origin_not_allowed, body_too_large, "
            "rate_limited, bad_request, broker_unavailable), by write key and reason.",
            ["key", "reason"], registry=self.registry)
        self.latency = Histogram(
            "journey_collector_request_seconds", "Time to answer a request, by endpoint.",
            ["endpoint"], registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))

    def render(self) -> bytes:
        return generate_latest(self.registry)
