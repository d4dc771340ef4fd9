"""CX metrics as a question: the grouping, the SLA deadlines, and the result records.

The definitions are written out in docs/METRICS.md; the SQL is
projections/clickhouse/builders/kpis.py.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from projections.analysis.spec import SpecError
from projections.durations import parse_window
from projections.friction.config import DEFAULT_CHANNEL as FRICTION_DEFAULT_CHANNEL
from projections.friction.config import SlaBreachConfig

PERCENTILES = (0.5, 0.9)


class Dimension(StrEnum):
    channel = "channel"
    day = "day"
    week = "week"
    month = "month"


# The time dimensions: a row groups by one of them at most.
PERIOD_DIMENSIONS = frozenset({Dimension.day, Dimension.week, Dimension.month})
# `--by total` (or nothing): one row over everything.
TOTAL = "total"


def parse_grouping(text: str) -> tuple[Dimension, ...]:
    """`channel`, `week`, `channel,week`, ... or `total`: the dimensions of a KPI row."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if parts == [TOTAL] or not parts:
        return ()
    choices = ", ".join([*(d.value for d in Dimension), TOTAL])
    found: list[Dimension] = []
    for part in parts:
        try:
            dimension = Dimension(part)
        except ValueError:
            raise SpecError(f"cannot group by {part!r}: choose from {choices}") from None
        if dimension in found:
            raise SpecError(f"{part!r} is given twice")
        found.append(dimension)
    if sum(d in PERIOD_DIMENSIONS for d in found) > 1:
        raise SpecError("group by one period at most (day, week or month)")
    return tuple(found)


@dataclass(frozen=True, slots=True)
class Deadline:
    """A channel's service levels: seconds from a case's first contact to the first
    answer, and to its resolution."""

    first_response_seconds: int
    resolution_seconds: int

    def __post_init__(self) -> None:
        for name in ("first_response_seconds", "resolution_seconds"):
            value = getattr(self, name)
            if not 0 < value < 2**32:
                raise SpecError(f"a deadline's {name} must be positive, got {value}")


# Used for a channel that neither the given deadlines nor their default name.
DEFAULT_DEADLINE = Deadline(first_response_seconds=24 * 3600, resolution_seconds=72 * 3600)
DeadlineLike = Deadline | tuple[int, int]
# The channel name that sets the default deadlines in `parse_deadlines`.
DEFAULT_CHANNEL = "default"


def rule_deadlines(sla: SlaBreachConfig) -> tuple[dict[str, Deadline], Deadline]:
    """The sla_breach rule's deadlines (projections/friction/config.py) as KPI deadlines,
    so SLA compliance judges cases by the same clock as the friction detectors."""

    def seconds(channel: str) -> Deadline:
        return Deadline(sla.first_response_ms(channel) // 1000, sla.resolution_ms(channel) // 1000)

    channels = (set(sla.first_response) | set(sla.resolution)) - {FRICTION_DEFAULT_CHANNEL}
    return {c: seconds(c) for c in sorted(channels)}, seconds(FRICTION_DEFAULT_CHANNEL)


def parse_deadlines(items: Sequence[str]) -> tuple[dict[str, Deadline], Deadline]:
    """`CHANNEL=FIRST/RESOLUTION` texts (`chat=5m/4h`, `default=24h/3d`): the deadlines by
    channel, and the default for the channels not named (DEFAULT_DEADLINE if none is)."""
    named: dict[str, Deadline] = {}
    default = DEFAULT_DEADLINE
    for item in items:
        channel, sep, spans = item.partition("=")
        first, slash, resolution = spans.partition("/")
        channel = channel.strip()
        if not sep or not slash or not channel:
            raise SpecError(
                f"write CHANNEL=FIRST_RESPONSE/RESOLUTION such as chat=5m/4h, got {item!r}"
            )
        deadline = Deadline(
            parse_window(first, f"{channel}: first response"),
            parse_window(resolution, f"{channel}: resolution"),
        )
        if channel == DEFAULT_CHANNEL:
            default = deadline
        else:
            named[channel] = deadline
    return named, default


def _deadline(value: DeadlineLike) -> Deadline:
    return value if isinstance(value, Deadline) else Deadline(int(value[0]), int(value[1]))


@dataclass(frozen=True, slots=True)
class KpiSpec:
    """CX metrics per the dimensions of `by` (none: one row over everything), SLA
    compliance judged by `deadlines` per channel (None: the sla_breach rule's defaults)
    and `default_deadline` for the channels they do not name."""

    by: Sequence[Dimension | str] = (Dimension.channel,)
    since: datetime | None = None
    until: datetime | None = None
    deadlines: Mapping[str, DeadlineLike] | None = None
    default_deadline: DeadlineLike = DEFAULT_DEADLINE
    # the deadlines as given or defaulted, by channel in name order
    named_deadlines: Mapping[str, Deadline] = field(init=False)

    def __post_init__(self) -> None:
        try:
            dimensions = tuple(Dimension(d) for d in self.by)
        except ValueError as exc:
            raise SpecError(str(exc)) from None
        if len(set(dimensions)) != len(dimensions) or sum(
            d in PERIOD_DIMENSIONS for d in dimensions
        ) > 1:
            raise SpecError("group by distinct dimensions, one period at most")
        object.__setattr__(self, "by", dimensions)
        deadlines, default = self.deadlines, self.default_deadline
        if deadlines is None:  # the friction rules' defaults
            deadlines, default = rule_deadlines(SlaBreachConfig())
        object.__setattr__(self, "named_deadlines",
                           {c: _deadline(d) for c, d in sorted(deadlines.items())})
        object.__setattr__(self, "default_deadline", _deadline(default))

    @property
    def dimensions(self) -> tuple[Dimension, ...]:
        return tuple(Dimension(d) for d in self.by)


# KPI result columns after the dimensions, in order (see builders/kpis.py).
KPI_COLUMNS = (
    "customers", "cases", "csat_answers", "csat", "nps_answers", "nps", "ces_answers", "ces",
    "resolved_cases", "fcr", "first_response_median_seconds", "first_response_p90_seconds",
    "resolution_median_seconds", "resolution_p90_seconds", "sla_cases", "sla_compliance",
    "escalation_rate", "repeat_contact_rate", "frictions", "friction_per_1000",
)  # fmt: skip


def kpi_records(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
    """KPI rows as records; NaN (no value) becomes None."""
    return [
        {
            name: None if isinstance(value, float) and math.isnan(value) else value
            for name, value in zip(columns, row, strict=True)
        }
        for row in rows
    ]


def kpi_flat(records: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """KPI records as flat columns (CSV): the friction maps become one column per rule,
    `frictions.RULE` and `friction_per_1000.RULE`, over every rule any row has."""
    rules = sorted({rule for r in records for rule in (r.get("frictions") or {})})
    if records:
        plain = [c for c in records[0] if c not in ("frictions", "friction_per_1000")]
    else:
        plain = [c for c in KPI_COLUMNS if c not in ("frictions", "friction_per_1000")]
    columns = [*plain, *(f"frictions.{r}" for r in rules),
               *(f"friction_per_1000.{r}" for r in rules)]  # fmt: skip
    rows = [
        [
            *(r[c] for c in plain),
            *((r.get("frictions") or {}).get(rule, 0) for rule in rules),
            *((r.get("friction_per_1000") or {}).get(rule) for rule in rules),
        ]
        for r in records
    ]
    return columns, rows
