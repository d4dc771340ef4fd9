"""Analysts' SQL reads the warehouse and nothing else: the gate against the real engine (chDB).

Each refusal is checked next to proof that the statement is dangerous: run without the
gate, the same engine reads the file.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from journey.cli import main
from projections.clickhouse.client import QueryError, Warehouse, engine_dirs
from projections.clickhouse.readonly import (
    ALLOWED_TABLE_FUNCTIONS,
    QueryRejectedError,
    run_readonly,
)
from projections.clickhouse.tables import TOUCHPOINTS
from tests.ports import free_port

pytestmark = pytest.mark.integration

# The table functions that reach outside the warehouse, by the names analysts know.
REACHING_OUT = [
    "file", "url", "s3", "s3Cluster", "remote", "remoteSecure", "mysql", "postgresql", "hdfs",
    "executable", "jdbc", "odbc", "mongodb", "redis", "sqlite", "azureBlobStorage", "gcs",
    "iceberg", "deltaLake", "hudi", "input", "cluster", "clusterAllReplicas", "urlCluster",
    "fileCluster", "dictionary", "python", "filesystem", "loop", "merge", "mergeTreeIndex",
]  # fmt: skip

SYNTAX_ERROR = 62  # ClickHouse's code

# Where a table function can stand; {f} is the call.
PLACES = {
    "from": "SELECT * FROM {f}",
    "subquery": "SELECT count() FROM (SELECT * FROM {f})",
    "cte": "WITH t AS (SELECT * FROM {f}) SELECT * FROM t",
    "join": f"SELECT * FROM {TOUCHPOINTS} AS a INNER JOIN {{f}} AS b ON a.event_id = b.x",
    "in": f"SELECT count() FROM {TOUCHPOINTS} WHERE event_id IN (SELECT x FROM {{f}})",
    "union": "SELECT 1 UNION ALL SELECT * FROM {f}",
    "scalar subquery": "SELECT (SELECT count() FROM {f}) AS n",
    "describe": "DESCRIBE TABLE {f}",
    "explain": "EXPLAIN SELECT * FROM {f}",
    "explain pipeline": "EXPLAIN PIPELINE SELECT * FROM {f}",
    "view()": "SELECT * FROM view(SELECT * FROM {f})",
    "comments": "SELECT * /* a */ FROM -- b\n {f} # c\n",
}


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "secret.csv"
    path.write_text("the-secret\n")
    return path


def call(name: str, secret: Path) -> str:
    return f"{name}('{secret}', 'CSV', 's String')"


def refused(warehouse: Warehouse, sql: str, params: dict[str, Any] | None = None) -> str:
    with pytest.raises(QueryRejectedError) as caught:
        run_readonly(warehouse, sql, params)
    return str(caught.value)


def test_the_danger_is_real_without_the_gate(warehouse: Warehouse, secret: Path) -> None:
    # the engine itself reads files, by table function, plain function and bare name
    assert warehouse.query(f"SELECT * FROM file('{secret}', 'CSV')").rows == [("the-secret",)]
    assert "the-secret" in warehouse.query(f"SELECT file('{secret}')").scalar()
    assert warehouse.query(f"SELECT * FROM `{secret}`").rows == [("the-secret",)]
    # readonly=2 alone does not stop it
    assert warehouse.query(
        f"SELECT * FROM file('{secret}', 'CSV')", settings={"readonly": 2}
    ).rows == [("the-secret",)]


@pytest.mark.parametrize("name", REACHING_OUT)
def test_every_table_function_that_reaches_out_is_refused_everywhere(
    warehouse: Warehouse, secret: Path, name: str
) -> None:
    for place, template in PLACES.items():
        for spelling in (name, name.upper(), f"`{name}`", f'"{name}"'):
            sql = template.format(f=call(spelling, secret))
            message = refused(warehouse, sql)
            assert "reaches outside the warehouse" in message, (place, sql, message)


def test_the_engine_has_no_other_table_function_that_the_gate_lets_through(
    warehouse: Warehouse, secret: Path
) -> None:
    names = [row[0] for row in warehouse.query("SELECT name FROM system.table_functions").rows]
    assert "file" in names and "url" in names and len(names) > 50
    passed = []
    for name in names:
        if name in ALLOWED_TABLE_FUNCTIONS:
            continue
        try:
            run_readonly(warehouse, f"SELECT * FROM (SELECT * FROM {name}('{secret}'))")
        except QueryRejectedError:
            continue
        except QueryError as exc:
            if exc.code == SYNTAX_ERROR:  # never ran: it takes other arguments (see below)
                continue
        passed.append(name)
    assert passed == []


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT file('{secret}')",
        "SELECT lower(file('{secret}')) AS s",
        "SELECT * FROM numbers(1) WHERE file('{secret}') != ''",
        "SELECT * FROM '{secret}'",
        "SELECT * FROM `{secret}`",
        'SELECT * FROM "{secret}"',
        "SELECT * FROM default.`{secret}`",
        "SELECT * FROM (SELECT * FROM `{secret}`)",
        "WITH t AS (SELECT 1) SELECT * FROM `{secret}`",
        "SELECT 1 IN `{secret}`",
        "DESCRIBE TABLE `{secret}`",
        "SHOW CREATE TABLE `{secret}`",
        "EXISTS TABLE `{secret}`",
        "SELECT * FROM `{glob}`",
        "SELECT * FROM {{t:Identifier}}",
        "SELECT hasColumnInTable('default', '{secret}', 's')",
        "SELECT addressToLine(1)",
        "SELECT * FROM viewIfPermitted(SELECT 1 ELSE null('a UInt8'))",
    ],
)
def test_files_are_refused_by_every_other_door(
    warehouse: Warehouse, secret: Path, sql: str
) -> None:
    statement = sql.format(secret=secret, glob=secret.parent / "*.csv")
    refused(warehouse, statement, {"t": str(secret)})


@pytest.fixture
def file_by_the_engine() -> Iterator[str]:
    """A file in the directory the engine resolves bare names against, named like a table."""
    base = sorted(engine_dirs())[0]
    name = f"probe_{uuid.uuid4().hex[:8]}"
    path = Path(base) / name
    path.write_text("the-secret\n")
    try:
        yield name
    finally:
        path.unlink()


def test_a_bare_name_that_the_engine_would_read_as_a_file_is_refused(
    warehouse: Warehouse, file_by_the_engine: str
) -> None:
    name = file_by_the_engine
    rows = warehouse.query(f"SELECT * FROM {name}").rows  # the engine would read it
    assert rows == [("the-secret",)]
    for sql in (
        f"SELECT * FROM {name}",
        f"SELECT * FROM default.{name}",
        # a CTE of that name elsewhere does not make this reference one
        f"SELECT * FROM {name} UNION ALL (WITH {name} AS (SELECT 'x') SELECT * FROM {name})",
        f"SELECT 1 IN {name}",
        f"EXISTS TABLE {name}",
    ):
        assert "read it as a file" in refused(warehouse, sql), sql


def test_common_table_expressions_and_unknown_tables_pass_to_the_engine(
    warehouse: Warehouse,
) -> None:
    assert run_readonly(warehouse, "WITH t AS (SELECT 2 AS x) SELECT x FROM t").scalar() == 2
    assert run_readonly(
        warehouse, "WITH t AS (SELECT 2 AS x) SELECT count() FROM t WHERE x IN t"
    ).scalar() == 1
    assert run_readonly(warehouse, "EXISTS TABLE no_such_table").scalar() == 0
    with pytest.raises(Exception, match="no_such_table"):
        run_readonly(warehouse, "SELECT * FROM no_such_table")


def test_settings_that_could_reenable_things_are_refused(warehouse: Warehouse) -> None:
    for setting in ("readonly = 0", "allow_ddl = 1", "allow_introspection_functions = 1",
                    "max_threads = 1, readonly = 0"):
        for sql in (f"SELECT 1 SETTINGS {setting}",
                    f"SELECT * FROM (SELECT 1 SETTINGS {setting})"):
            assert "may not be changed" in refused(warehouse, sql), sql
    assert run_readonly(warehouse, "SELECT 1 AS one SETTINGS max_threads = 1").scalar() == 1
    enforced = run_readonly(
        warehouse,
        "SELECT getSetting('readonly'), getSetting('allow_ddl'), "
        "getSetting('allow_introspection_functions')",
    ).rows
    assert enforced == [(2, False, False)]


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1 INTO OUTFILE '/tmp/out.csv'",
        "SELECT 1 FORMAT CSV",
        "SELECT 1 INTO OUTFILE '/tmp/out.csv' FORMAT CSV",
        "CREATE TABLE t (a String) ENGINE = File(CSV, '/etc/passwd')",
        "CREATE TEMPORARY TABLE t ENGINE = URL('http://x', CSV) AS SELECT 1",
        "INSERT INTO FUNCTION file('/tmp/out.csv') SELECT 1",
        "SHOW COLUMNS FROM touchpoints",
        "SELECT 1; SELECT 2",
        "SELECT * FROM `x\ny`",
    ],
)
def test_writes_outfiles_and_formats_are_refused(warehouse: Warehouse, sql: str) -> None:
    refused(warehouse, sql)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT count() > 50 FROM system.tables",
        f"SELECT count() >= 0 FROM system.parts WHERE table = '{TOUCHPOINTS}'",
        "SELECT count() > 0 FROM system.columns WHERE table = 'touchpoints'",
        "SELECT count() > 0 FROM system.settings",
        "SELECT count() > 0 FROM system.table_functions",
        "SELECT count() > 0 FROM information_schema.tables",
        "SELECT count() > 0 FROM `system`.`databases`",
    ],
)
def test_system_tables_are_readable(warehouse: Warehouse, sql: str) -> None:
    assert run_readonly(warehouse, sql).scalar() == 1


@pytest.mark.parametrize(
    "sql",
    [
        "SHOW TABLES",
        "SHOW TABLES FROM system",
        "SHOW DATABASES",
        f"SHOW CREATE TABLE {TOUCHPOINTS}",
        f"DESCRIBE TABLE {TOUCHPOINTS}",
        f"EXISTS TABLE {TOUCHPOINTS}",
        "EXPLAIN SELECT count() FROM numbers(10)",
        "EXPLAIN PIPELINE graph = 1 SELECT 1",
        "SELECT sum(number) FROM numbers(10)",
        "SELECT * FROM generateRandom('a UInt8', 1) LIMIT 2",
        "SELECT * FROM values('a UInt8', 1, 2)",
        "SELECT * FROM view(SELECT 1)",
        "SELECT * FROM format(CSV, 'a String', 'x')",
    ],
)
def test_inspecting_the_warehouse_works(warehouse: Warehouse, sql: str) -> None:
    assert run_readonly(warehouse, sql).rows


def test_journey_sql_refuses_with_one_line(
    warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    secret: Path,
) -> None:
    monkeypatch.setenv("JOURNEY_CLICKHOUSE_DSN", f"chdb://{warehouse.location}")
    monkeypatch.setenv("JOURNEY_WORKER_PORT", str(free_port()))
    with pytest.raises(SystemExit) as exited:
        main(["sql", f"SELECT * FROM file('{secret}', 'LineAsString')"])
    assert exited.value.code == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("error: the table function file() reaches outside the warehouse")
    assert err.count("\n") == 1 and "the-secret" not in err
    main(["sql", "-f", "csv", "SELECT count() > 0 AS ok FROM system.tables"])
    assert capsys.readouterr().out == "ok\n1\n"
    assert os.path.exists(secret)  # nothing was written either


def test_journey_sql_prints_values_as_they_are(
    warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("JOURNEY_CLICKHOUSE_DSN", f"chdb://{warehouse.location}")
    monkeypatch.setenv("JOURNEY_WORKER_PORT", str(free_port()))
    # piped (captured): plain columns, markup and emoji codes as written, numbers whole
    main(["sql", "SELECT * FROM (SELECT '[/]' AS a, ':smile: root:x:0' AS b, '[bold]x' AS c, "
                 "toUInt64(98765432109876543) AS n UNION ALL "
                 "SELECT 'y', 'z', NULL, 7) ORDER BY n DESC"])
    out, err = capsys.readouterr()
    assert err == ""
    assert out.splitlines() == [
        "a    b                 c                        n",
        "---  ----------------  -------  -----------------",
        "[/]  :smile: root:x:0  [bold]x  98765432109876543",
        "y    z                 NULL                     7",
    ]
