"""Retention cohorts as a question: who comes back, period by period."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from projections.analysis.paths import DEFAULT_CONVERSION
from projections.analysis.spec import require_between, require_type

MAX_RETENTION_PERIODS = 120


class Period(StrEnum):
    week = "week"  # ISO weeks, Monday first
    month = "month"  # calendar months


@dataclass(frozen=True, slots=True)
class RetentionSpec:
    """People by the period of their first `cohort_event`, and how many come back in
    each of the `periods` later periods with `return_event` (None: any touchpoint)."""

    cohort_event: str = DEFAULT_CONVERSION
    return_event: str | None = None
    period: Period = Period.week
    periods: int = 8
    since: datetime | None = None
    until: datetime | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "period", Period(self.period))
        require_type("cohort_event", self.cohort_event)
        if self.return_event is not None:
            require_type("return_event", self.return_event)
        require_between("periods", self.periods, 0, MAX_RETENTION_PERIODS)
