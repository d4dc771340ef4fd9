"""What friction costs, as a question: the funnel compared, the outcome windows, the rules.

The definitions are written out in docs/METRICS.md; the SQL is
projections/clickhouse/builders/impact.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from projections.analysis.funnel import DEFAULT_WINDOW, FunnelSpec, FunnelSpecError, parse_funnel
from projections.analysis.spec import SpecError

# The default funnel of `friction impact`: a started checkout that ends in a purchase.
DEFAULT_IMPACT_FUNNEL = ("checkout_started", "purchase")
DEFAULT_RETENTION_FROM_DAYS = 30
DEFAULT_RETENTION_TO_DAYS = 60
DEFAULT_REVENUE_DAYS = 60
MAX_OUTCOME_DAYS = 3660


def impact_funnel(steps: Sequence[str] | None = None, window: str = DEFAULT_WINDOW) -> FunnelSpec:
    """The funnel whose conversion friction impact compares (journey funnel's syntax);
    no steps: checkout_started then purchase."""
    return parse_funnel(list(steps or DEFAULT_IMPACT_FUNNEL), window=window)


def _check_days(name: str, value: int) -> None:
    if not 0 <= value <= MAX_OUTCOME_DAYS:
        raise SpecError(f"{name} must be between 0 and {MAX_OUTCOME_DAYS} days, got {value}")


@dataclass(frozen=True, slots=True)
class ImpactSpec:
    """Per friction rule (all, or `rules`): conversion through `funnel` (None: the
    default funnel), retention from `retention_from_days` to `retention_to_days` and
    revenue over `revenue_days` after the reference date, of the customers who hit it
    in the range against comparable ones who did not."""

    funnel: FunnelSpec | None = None
    since: datetime | None = None
    until: datetime | None = None
    retention_from_days: int = DEFAULT_RETENTION_FROM_DAYS
    retention_to_days: int = DEFAULT_RETENTION_TO_DAYS
    revenue_days: int = DEFAULT_REVENUE_DAYS
    rules: Sequence[str] = ()
    # the funnel over the study period (the range), which the conversion is read from
    study_funnel: FunnelSpec = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rules", tuple(self.rules))
        _check_days("retention_from_days", self.retention_from_days)
        _check_days("retention_to_days", self.retention_to_days)
        _check_days("revenue_days", self.revenue_days)
        if self.retention_from_days >= self.retention_to_days:
            raise SpecError("the retention window must end after it starts")
        if self.revenue_days < 1:
            raise SpecError("revenue_days must be at least 1")
        funnel = impact_funnel() if self.funnel is None else self.funnel
        try:
            study = dataclasses.replace(funnel, since=self.since, until=self.until)
        except FunnelSpecError as exc:
            raise SpecError(str(exc)) from exc
        object.__setattr__(self, "study_funnel", study)


# Result columns of the impact question, in order.
IMPACT_COLUMNS = (
    "rule", "affected", "matched", "comparison",
    "conversion_affected", "conversion_comparison", "conversion_diff",
    "retention_customers", "retention_affected", "retention_comparison", "retention_diff",
    "revenue_customers", "revenue_affected_total", "revenue_per_customer_affected",
    "revenue_per_customer_comparison", "revenue_per_customer_diff", "lost_revenue",
)  # fmt: skip
