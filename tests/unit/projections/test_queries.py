"""The read-only gate and the SQL builders, without an engine."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from projections.clickhouse.queries import (
    funnel_sql,
    jsonable,
    touchpoint_counts_sql,
)
from projections.clickhouse.readonly import QueryRejectedError, check_readonly
from projections.clickhouse.tables import TOUCHPOINTS


@pytest.mark.parametrize(
    ("sql", "statement"),
    [
        ("SELECT 1", "SELECT 1"),
        ("  select 1 ;  ", "select 1"),
        ("SELECT 1;;\n", "SELECT 1"),
        ("SELECT 1; -- done", "SELECT 1"),
        ("SELECT 1 /* ; drop */ + 1", "SELECT 1 /* ; drop */ + 1"),
        ("WITH x AS (SELECT 1) SELECT * FROM x", "WITH x AS (SELECT 1) SELECT * FROM x"),
        ("(SELECT 1) UNION ALL (SELECT 2)", "(SELECT 1) UNION ALL (SELECT 2)"),
        ("SHOW TABLES", "SHOW TABLES"),
        ("DESCRIBE TABLE touchpoints", "DESCRIBE TABLE touchpoints"),
        ("desc touchpoints", "desc touchpoints"),
        ("EXPLAIN SELECT 1", "EXPLAIN SELECT 1"),
        ("EXISTS TABLE touchpoints", "EXISTS TABLE touchpoints"),
        ("SELECT ';' AS s, 'drop table x' AS t", "SELECT ';' AS s, 'drop table x' AS t"),
        ("SELECT 'it''s; insert', 'a\\'b;'", "SELECT 'it''s; insert', 'a\\'b;'"),
        ('SELECT "update", `delete` FROM t', 'SELECT "update", `delete` FROM t'),
        ("SELECT $$a; DROP TABLE t$$", "SELECT $$a; DROP TABLE t$$"),
        ("SELECT $x$ ' $x$ AS q", "SELECT $x$ ' $x$ AS q"),
        ("SELECT 1 # ; insert\n", "SELECT 1"),
        ("SELECT format('{} {}', 'a', 'b')", "SELECT format('{} {}', 'a', 'b')"),
        ("SELECT 1 SETTINGS max_threads = 1", "SELECT 1 SETTINGS max_threads = 1"),
        ("SELECT {name:String}", "SELECT {name:String}"),
        ("/* a /* nested */ comment */ SELECT 1", "/* a /* nested */ comment */ SELECT 1"),
    ],
)
def test_read_only_statements_pass(sql: str, statement: str) -> None:
    assert check_readonly(sql) == statement


@pytest.mark.parametrize(
    "sql",
    [
        "",
        "  ;  ",
        "-- only a comment",
        "DROP TABLE touchpoints",
        "drop table touchpoints",
        "INSERT INTO touchpoints SELECT * FROM touchpoints",
        "CREATE TABLE x (a UInt8) ENGINE = Memory",
        "ALTER TABLE touchpoints DELETE WHERE 1",
        "TRUNCATE TABLE touchpoints",
        "OPTIMIZE TABLE touchpoints FINAL",
        "SYSTEM SHUTDOWN",
        "SET readonly = 0",
        "KILL QUERY WHERE 1",
        "SELECT 1; SELECT 2",
        "SELECT 1; DROP TABLE touchpoints",
        "SELECT 1;\nDROP TABLE touchpoints;",
        "WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x",
        "EXPLAIN INSERT INTO t VALUES (1)",
        "SELECT 1 INTO OUTFILE '/tmp/x.csv'",
        "SELECT * FROM touchpoints FORMAT JSON",
        "SELECT 'unterminated",
        "SELECT 1 /* unterminated",
        "SELECT $$ unterminated",
        # a string opened in what looks like a comment to a careless lexer
        "/* /* */ ' */ ; DROP TABLE x; -- '",
        "SELECT 1 -- '\n; DROP TABLE x; -- '",
        "SELECT 1 # '\n; DROP TABLE x; -- '",
        "SELECT $a$ ' $a$; DROP TABLE x; -- '",
    ],
)
def test_anything_else_is_rejected(sql: str) -> None:
    with pytest.raises(QueryRejectedError):
        check_readonly(sql)


def test_rejection_names_the_verb() -> None:
    with pytest.raises(QueryRejectedError, match="not DROP"):
        check_readonly("DROP TABLE touchpoints")


HOSTILE = ["it's", "x'; DROP TABLE touchpoints; --", "{step_0:String}", "\\'", "$$"]


def test_funnel_binds_step_types_and_window() -> None:
    sql, params = funnel_sql(HOSTILE, window_seconds=3600)
    for step in HOSTILE[:2]:
        assert step not in sql
    assert "DROP" not in sql
    assert params["steps"] == HOSTILE
    assert [params[f"step_{i}"] for i in range(len(HOSTILE))] == HOSTILE
    assert params["window_ms"] == 3_600_000
    assert "{window_ms:UInt64}" in sql and "{steps:Array(String)}" in sql
    for i in range(len(HOSTILE)):
        assert f"type = {{step_{i}:String}}" in sql
    assert f"FROM {TOUCHPOINTS} FINAL" in sql
    assert "'strict_increase'" in sql
    # the statement is read-only by the gate's own standard
    check_readonly(sql)


def test_funnel_checks_its_arguments() -> None:
    with pytest.raises(ValueError):
        funnel_sql([], 60)
    with pytest.raises(ValueError):
        funnel_sql(["purchase"], 0)


def test_time_range_is_bound() -> None:
    since = datetime(2024, 1, 1, tzinfo=UTC)
    until = datetime(2024, 2, 1)  # naive reads as UTC
    sql, params = touchpoint_counts_sql(since=since, until=until)
    assert params == {
        "since": "2024-01-01T00:00:00+00:00",
        "until": "2024-02-01T00:00:00+00:00",
        "identify_type": "identify",
    }
    assert "{since:String}" in sql and "{until:String}" in sql
    assert "2024" not in sql
    sql, params = funnel_sql(["a", "b"], 60, since=since)
    assert "since" in params and "until" not in params
    assert re.search(r"occurred_at >= \S+\(\{since:String\}", sql)


def test_counts_without_range_filter_no_time() -> None:
    sql, params = touchpoint_counts_sql()
    # only the identity link's type is bound; no time bound is read
    assert params == {"identify_type": "identify"}
    assert "occurred_at >=" not in sql and "occurred_at <" not in sql
    assert f"FROM {TOUCHPOINTS} FINAL" in sql


def _identities_cte(sql: str) -> str:
    start = sql.index("identities AS (")
    return sql[start : sql.index("\n)", start)]


@pytest.mark.parametrize(
    "built",
    [
        funnel_sql(["ad_impression", "purchase"], 60),
        funnel_sql(["ad_impression", "purchase"], 60, since=datetime(2024, 1, 1, tzinfo=UTC)),
        touchpoint_counts_sql(),
        touchpoint_counts_sql(until=datetime(2024, 1, 1, tzinfo=UTC)),
    ],
)
def test_queries_stitch_anonymous_ids_to_their_first_identify(
    built: tuple[str, dict[str, object]],
) -> None:
    sql, params = built
    assert params["identify_type"] == "identify"
    cte = _identities_cte(sql)
    assert "type = {identify_type:String}" in cte
    assert f"FROM {TOUCHPOINTS} FINAL" in cte
    # first link wins: the customer of the earliest identify, ties by event_id
    assert "argMin(customer_id, (occurred_at, event_id))" in cte
    assert "GROUP BY anonymous_id" in cte
    # an identify before the queried range still links, so the link ignores the range
    assert "since" not in cte and "until" not in cte
    assert "LEFT ANY JOIN identities AS i ON e.anonymous_id = i.anonymous_id" in sql
    # person: own customer_id, else the linked customer, else the anonymous id
    person = sql[sql.index("multiIf(") :]
    order = [person.index(c) for c in ("e.customer_id", "i.linked_customer_id", "e.anonymous_id")]
    assert order == sorted(order)
    assert "identify" not in sql.replace("identify_type", "").replace("identities", "")
    check_readonly(sql)


def test_funnel_and_counts_group_by_person() -> None:
    funnel, _ = funnel_sql(["a", "b"], 60)
    assert "GROUP BY person" in funnel
    assert "customer_key," not in funnel.split("per_person AS")[1]
    counts, _ = touchpoint_counts_sql()
    assert "uniqExact(person) AS customers" in counts
    assert "uniqExact(customer_key)" not in counts


def test_jsonable() -> None:
    from decimal import Decimal
    from uuid import UUID

    moment = datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC)
    uid = UUID(int=1)
    assert jsonable(moment) == "2024-05-01T12:00:00.123000+00:00"
    assert jsonable(Decimal("19.9900")) == "19.9900"
    assert jsonable(uid) == str(uid)
    assert jsonable((1, [b"ab", None], {"k": Decimal(1)})) == [1, ["ab", None], {"k": "1"}]
    assert jsonable(b"\xff") == "/w=="
