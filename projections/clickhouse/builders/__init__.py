"""One builder per analyst question: a spec of projections/analysis/ in, a Statement out.

`build` finds the builder of a spec by its type, so the HTTP API and the runner answer
any question without knowing its SQL.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from projections.analysis.funnel import FunnelSpec
from projections.analysis.impact import ImpactSpec
from projections.analysis.kpis import KpiSpec
from projections.analysis.paths import FlowsSpec, PathsSpec, StageMapSpec
from projections.analysis.retention import RetentionSpec
from projections.analysis.timeline import CustomerSpec
from projections.analysis.trends import TouchpointCountsSpec
from projections.clickhouse.builders.funnel import funnel_query
from projections.clickhouse.builders.impact import impact_query
from projections.clickhouse.builders.kpis import kpis_query
from projections.clickhouse.builders.paths import flows_query, paths_query, stage_map_query
from projections.clickhouse.builders.retention import retention_query
from projections.clickhouse.builders.timeline import timeline_query
from projections.clickhouse.builders.trends import touchpoint_counts_query
from projections.clickhouse.sql import Statement

BUILDERS: dict[type[Any], Callable[[Any], Statement]] = {
    FunnelSpec: funnel_query,
    PathsSpec: paths_query,
    FlowsSpec: flows_query,
    StageMapSpec: stage_map_query,
    RetentionSpec: retention_query,
    CustomerSpec: timeline_query,
    KpiSpec: kpis_query,
    ImpactSpec: impact_query,
    TouchpointCountsSpec: touchpoint_counts_query,
}


def build(spec: object) -> Statement:
    """The statement that answers `spec` (a spec of projections/analysis/)."""
    builder = BUILDERS.get(type(spec))
    if builder is None:
        raise TypeError(f"no builder answers a {type(spec).__name__}")
    return builder(spec)
