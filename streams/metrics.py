"""Counters of one worker process, served on its /status endpoint."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


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
