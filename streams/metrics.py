"""Counters of one worker process, served on its /status and /metrics endpoints."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from streams.health import HealthMonitor


@dataclass
class Metrics:
    """Plain counters; the worker is one event loop, so no locking is needed."""

    started_at: float = field(default_factory=time.time)
    read: int = 0  # messages the validator took from the ingest topic
    validated: int = 0  # of those, valid touchpoints (repeats included)
    valid: int = 0  # valid touchpoints the dedup stage stored on `touchpoints`
    invalid: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    written: int = 0  # touchpoint rows
    written_by_table: Counter[str] = field(default_factory=Counter)
    journey: Counter[str] = field(default_factory=Counter)
    friction: Counter[str] = field(default_factory=Counter)  # friction published, by rule
    friction_retracted: Counter[str] = field(default_factory=Counter)  # by rule
    friction_too_late: int = 0  # touchpoints beyond max_lateness (not used for friction)
    friction_read: int = 0  # touchpoints the friction detectors committed
    friction_skipped: int = 0  # records on `touchpoints` that were no touchpoint (logged)
    sink_batches: int = 0
    sink_failures: int = 0
    send_failures: int = 0
    last_insert_error: str | None = None

    def snapshot(self) -> dict[str, Any]:
        return {
            "uptime_seconds": round(time.time() - self.started_at, 3),
            "read": self.read,
            "validated": self.validated,
            "valid": self.valid,
            "invalid": sum(self.invalid.values()),
            "invalid_by_reason": {str(k): v for k, v in sorted(self.invalid.items())},
            "duplicates": self.duplicates,
            "written": self.written,
            "written_by_table": dict(sorted(self.written_by_table.items())),
            "journey": dict(sorted(self.journey.items())),
            "friction": dict(sorted(self.friction.items())),
            "friction_retracted": dict(sorted(self.friction_retracted.items())),
            "friction_too_late": self.friction_too_late,
            "friction_read": self.friction_read,
            "friction_skipped": self.friction_skipped,
            "sink_batches": self.sink_batches,
            "sink_failures": self.sink_failures,
            "send_failures": self.send_failures,
            "last_insert_error": self.last_insert_error,
        }


# ---- Prometheus exposition ------------------------------------------------------------

# Every counter of Metrics as a Prometheus metric: attribute -> (name, help, label of a
# Counter's keys or None). A test holds this to every field, so none is forgotten.
EXPORTED: dict[str, tuple[str, str, str | None]] = {
    "read": ("journey_ingest_read", "messages the validator took from the ingest topic", None),
    "validated": ("journey_validated", "valid touchpoints from the validator, repeats "
                  "included", None),
    "valid": ("journey_touchpoints_stored", "valid touchpoints the dedup stage stored on "
              "the touchpoints topic", None),
    "invalid": ("journey_invalid", "messages dead-lettered, by reason", "reason"),
    "duplicates": ("journey_duplicates", "repeats of an event id dropped by the dedup stage",
                   None),
    "written": ("journey_touchpoint_rows_written", "touchpoint rows written to ClickHouse",
                None),
    "written_by_table": ("journey_rows_written", "rows written to ClickHouse, by table",
                         "table"),
    "journey": ("journey_projection_events", "what the journey projection did, by kind",
                "kind"),
    "friction": ("journey_friction_published", "friction published, by rule", "rule"),
    "friction_retracted": ("journey_friction_retracted", "friction retracted, by rule", "rule"),
    "friction_too_late": ("journey_friction_too_late", "touchpoints that arrived beyond "
                          "max_lateness (not used for friction)", None),
    "friction_read": ("journey_friction_read", "touchpoints the friction detectors committed",
                      None),
    "friction_skipped": ("journey_friction_skipped", "records on the touchpoints topic that "
                         "were no touchpoint", None),
    "sink_batches": ("journey_sink_batches", "ClickHouse insert batches written", None),
    "sink_failures": ("journey_sink_failures", "ClickHouse inserts that failed (retried) and "
                      "records skipped as poison", None),
    "send_failures": ("journey_send_failures", "Kafka sends that failed", None),
}
# Not counters: exported as gauges below.
NOT_COUNTERS = frozenset({"started_at", "last_insert_error"})


def collect(metrics: Metrics, health: HealthMonitor | None = None) -> list[Metric]:
    """The worker's metrics as Prometheus metric families, read now."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    families: list[Metric] = []
    for attribute, (name, documentation, label) in EXPORTED.items():
        value = getattr(metrics, attribute)
        if label is None:
            families.append(CounterMetricFamily(name, documentation, value=value))
            continue
        family = CounterMetricFamily(name, documentation, labels=[label])
        for key, n in sorted(value.items()):
            family.add_metric([str(key)], n)
        families.append(family)
    families.append(GaugeMetricFamily("journey_worker_start_time_seconds",
                                      "when this worker started (Unix time)",
                                      value=metrics.started_at))
    families.append(GaugeMetricFamily("journey_last_insert_failed", "1 while the latest "
                                      "ClickHouse insert failed", value=int(
                                          metrics.last_insert_error is not None)))
    if health is not None:
        families.extend(_health_families(health))
    return families


def _health_families(health: HealthMonitor) -> list[Metric]:
    from prometheus_client.core import GaugeMetricFamily

    up = GaugeMetricFamily("journey_health_check_ok", "1 when the health check passed in "
                           "its latest round", labels=["check"])
    lag = GaugeMetricFamily("journey_consumer_group_lag", "records the consumer group has "
                            "not committed yet", labels=["group"])
    for name, result in health.results.items():
        up.add_metric([name], int(result.ok))
        for group, n in dict(result.detail.get("lag") or {}).items():
            lag.add_metric([group], n)
    healthy, _ = health.report()
    overall = GaugeMetricFamily("journey_healthy", "1 when /health answers 200",
                                value=int(healthy))
    return [up, lag, overall]


def exposition(metrics: Metrics, health: HealthMonitor | None = None) -> tuple[bytes, str]:
    """The Prometheus text format of the worker's metrics, and its content type."""
    from prometheus_client import CONTENT_TYPE_LATEST
    from prometheus_client.exposition import generate_latest
    from prometheus_client.registry import CollectorRegistry

    class _Collector:
        def collect(self) -> list[Metric]:
            return collect(metrics, health)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector())
    return generate_latest(registry), CONTENT_TYPE_LATEST
