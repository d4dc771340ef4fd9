"""The read-only gate for analysts' SQL, without an engine."""

from __future__ import annotations

import pytest

from projections.clickhouse.readonly import QueryRejectedError, check_readonly


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
