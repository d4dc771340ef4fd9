"""The paths, flows, retention and timeline builders: the SQL their specs become."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest

from projections.analysis.paths import FlowsSpec, PathsSpec
from projections.analysis.retention import Period, RetentionSpec
from projections.analysis.timeline import CustomerSpec
from projections.clickhouse.builders import timeline as timeline_builder
from projections.clickhouse.builders.paths import flows_query, paths_query
from projections.clickhouse.builders.retention import retention_query
from projections.clickhouse.builders.timeline import identity_query, timeline_query
from projections.clickhouse.readonly import check_readonly
from projections.clickhouse.sql import Statement
from projections.clickhouse.tables import TOUCHPOINTS

HOSTILE = "x'; DROP TABLE touchpoints; --"
Built = tuple[str, dict[str, object]]


def paths(**options: Any) -> Statement:
    return paths_query(PathsSpec(**options))


def flows(**options: Any) -> Statement:
    return flows_query(FlowsSpec(**options))


def retention(**options: Any) -> Statement:
    return retention_query(RetentionSpec(**options))


def timeline(customer: str, **options: Any) -> Statement:
    return timeline_query(CustomerSpec(customer, **options))


def identity(customer: str) -> Statement:
    return identity_query(CustomerSpec(customer))


def assert_bound(built: Built, name: str, value: object) -> str:
    """The value travels as parameter `name`, never as SQL text; returns the SQL."""
    sql, params = built
    assert params[name] == value
    assert HOSTILE not in sql and "DROP" not in sql
    assert re.search(rf"\{{{name}:[A-Za-z0-9()]+\}}", sql), name
    check_readonly(sql)  # the analysis statements pass the analysts' read-only gate
    return sql


@pytest.mark.parametrize(
    ("built", "name", "value"),
    [
        (paths(start_at=HOSTILE), "anchor", HOSTILE),
        (paths(end_at=HOSTILE), "anchor", HOSTILE),
        (paths(exclude=[HOSTILE, "identify"]), "exclude", [HOSTILE, "identify"]),
        (flows(conversion=HOSTILE), "conversion", HOSTILE),
        (flows(exclude=[HOSTILE]), "exclude", [HOSTILE]),
        (retention(cohort_event=HOSTILE), "cohort_event", HOSTILE),
        (retention(return_event=HOSTILE), "return_event", HOSTILE),
        (timeline(HOSTILE), "customer", HOSTILE),
        (identity(HOSTILE), "customer", HOSTILE),
    ],
)
def test_user_values_are_bound(built: Built, name: str, value: object) -> None:
    assert_bound(built, name, value)


def test_numbers_and_times_are_bound() -> None:
    since = datetime(2024, 1, 1, tzinfo=UTC)
    until = datetime(2024, 3, 1)  # naive reads as UTC
    sql = assert_bound(paths(top=7, max_length=3, since=since, until=until), "max_length", 3)
    _, params = paths(top=7, max_length=3, since=since, until=until)
    assert params["top"] == 7
    assert params["since"] == "2024-01-01T00:00:00+00:00"
    assert params["until"] == "2024-03-01T00:00:00+00:00"
    assert "LIMIT {top:UInt32}" in sql and "2024" not in sql
    sql = assert_bound(retention(periods=5), "periods", 5)
    assert "{periods:UInt16}" in sql
    assert_bound(flows(top=3), "top", 3)
    assert_bound(timeline("c-1", limit=9), "limit", 9)


def test_every_builder_reads_deduplicated_touchpoints_and_stitches_people() -> None:
    for sql, params in (
        paths(),
        flows(),
        retention(),
        timeline("c-1"),
        identity("c-1"),
    ):
        assert f"FROM {TOUCHPOINTS} FINAL" in sql
        assert f"FROM {TOUCHPOINTS} " not in sql.replace(f"FROM {TOUCHPOINTS} FINAL", "")
        assert params["identify_type"] == "identify"
        assert "argMin(customer_id, (occurred_at, event_id))" in sql


def test_paths_shape() -> None:
    sql, params = paths()
    # one time-ordered array per person, ties by event_id
    assert "arraySort(groupArray((occurred_at, event_id, type)))" in sql
    assert "GROUP BY person" in sql
    assert "arrayCompact(types)" in sql
    assert "GROUP BY path" in sql and "ORDER BY people DESC, path" in sql
    assert "count() / sum(count()) OVER () AS share" in sql
    assert "anchor" not in params and "exclude" not in params
    assert "arraySlice(steps, 1, {max_length:UInt16})" in sql

    sql, params = paths(start_at="site_visit", collapse_repeats=False)
    assert "arrayCompact" not in sql
    assert "indexOf(steps, {anchor:String})" in sql
    assert "arraySlice(steps, anchor_at, {max_length:UInt16})" in sql
    assert "WHERE anchor_at > 0" in sql

    sql, _ = paths(end_at="purchase", exclude=["identify"])
    assert "toInt64(anchor_at) - {max_length:UInt16} + 1" in sql
    assert "least(anchor_at, {max_length:UInt16})" in sql
    # collapsing comes after the exclusion: a, identify, a is one step
    assert "arrayCompact(arrayFilter(t -> NOT has({exclude:Array(String)}, t), types))" in sql


def test_flows_shape() -> None:
    sql, params = flows()
    assert params["conversion"] == "purchase"
    assert "ARRAY JOIN arrayZip(arrayPopBack(steps), arrayPopFront(steps)) AS pair" in sql
    # converted is read from the whole journey, before any exclusion
    assert "has(types, {conversion:String}) AS converted" in sql
    assert "GROUP BY source, target" in sql
    assert "ORDER BY transitions DESC, source, target" in sql
    assert "LIMIT" not in sql and "top" not in params
    sql, params = flows(top=5, collapse_repeats=False)
    assert "LIMIT {top:UInt32}" in sql and params["top"] == 5
    assert "arrayCompact" not in sql


@pytest.mark.parametrize(
    ("period", "start", "add"),
    [(Period.week, "toMonday", "addWeeks"), (Period.month, "toStartOfMonth", "addMonths")],
)
def test_retention_shape(period: Period, start: str, add: str) -> None:
    since = datetime(2024, 1, 1, tzinfo=UTC)
    until = datetime(2024, 6, 1, tzinfo=UTC)
    sql, params = retention(period=period, since=since, until=until)
    assert f"{start}(occurred_at) AS cohort" in sql
    assert f"dateDiff('{period.value}', cohort, {start}(t))" in sql
    assert f"{add}(cohort, k) <= horizon" in sql
    assert "minIf(occurred_at, type = {cohort_event:String}) AS entered_at" in sql
    assert "groupArray(occurred_at) AS returns" in sql  # any touchpoint returns
    assert "arrayFilter(t -> t >= occurred_at, returns)" in sql
    assert "sumForEach(" in sql
    # since selects the cohorts (by entry); until bounds every read
    entrants = sql[sql.index("entrants AS (") : sql.index("members AS (")]
    members = sql[sql.index("members AS (") : sql.index("cohorts AS (")]
    assert "{until:String}" in entrants and "{since:String}" not in entrants
    assert "{since:String}" in members
    horizon = sql[: sql.index("AS horizon")]
    assert "{until:String}" in horizon[horizon.rindex("(SELECT") :]
    assert params["since"] == since.isoformat() and params["until"] == until.isoformat()


def test_retention_with_a_return_type_reads_only_the_two_types() -> None:
    sql, _ = retention(return_event="site_visit")
    assert "groupArrayIf(occurred_at, type = {return_event:String})" in sql
    assert "type IN ({cohort_event:String}, {return_event:String})" in sql
    # the horizon is the latest touchpoint of any type
    horizon = sql[: sql.index("AS horizon")]
    assert "return_event" not in horizon[horizon.rindex("(SELECT") :]


def test_timeline_shape() -> None:
    sql, params = timeline("a-1", limit=50)
    assert params["customer"] == "a-1" and params["limit"] == 50
    assert "subject AS (" in sql
    assert "WHERE person = (SELECT person FROM subject)" in sql
    # newest entries kept, shown oldest first; total counted before the limit
    assert "ORDER BY occurred_at DESC, event_id DESC\n    LIMIT {limit:UInt32}" in sql
    assert sql.rstrip().endswith("ORDER BY occurred_at, event_id")
    assert "count() OVER () AS total" in sql
    assert "'touchpoint' AS entry" in sql


def test_timeline_takes_further_entry_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    def stage_changes() -> str:
        return "SELECT occurred_at, 'stage_change' AS entry FROM somewhere"

    monkeypatch.setattr(timeline_builder, "_TIMELINE_SOURCES",
                        (*timeline_builder._TIMELINE_SOURCES, stage_changes))
    sql, _ = timeline("c-1")
    entries = sql[sql.index("entries AS (") :]
    assert "UNION ALL" in entries and "'stage_change' AS entry" in entries
