"""The touchpoint-count builders: how many touchpoints and people, of each type or in all."""

from __future__ import annotations

from projections.analysis.trends import TouchpointCountsSpec
from projections.clickhouse.sql import (
    Params,
    Statement,
    deduplicated,
    identities,
    people,
    time_range,
)
from projections.clickhouse.tables import TOUCHPOINTS, columns


def touchpoint_counts_query(spec: TouchpointCountsSpec) -> Statement:
    """Touchpoints and distinct customers per type, most frequent first.

    Customers are people stitched as everywhere (`sql.people`): an anonymous id that
    identified counts as its customer, so one person is never two customers of a type.
    """
    params: Params = {}
    read = people(columns(TOUCHPOINTS, "type"), time_range(spec.since, spec.until, params))
    sql = f"""
WITH
{identities(params)}
SELECT type, count() AS touchpoints, uniqExact(person) AS customers
FROM {read}
GROUP BY type
ORDER BY touchpoints DESC, type
"""
    return Statement(sql, params)


def touchpoint_total_query() -> Statement:
    """Stored touchpoints after deduplication: one row, one column."""
    return Statement(f"SELECT count() AS touchpoints FROM {deduplicated(TOUCHPOINTS)}", {})
