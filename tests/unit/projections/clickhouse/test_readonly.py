"""The analysts' SQL gate on the engine's parse, without an engine: canned EXPLAIN AST dumps."""

from __future__ import annotations

import pytest

from projections.clickhouse.readonly import (
    ALLOWED_TABLE_FUNCTIONS,
    QueryRejectedError,
    check_canonical,
    check_readonly,
    check_table_names,
    inspect_tree,
    lex,
    parse_ast,
    settings_clauses,
)

# What the engine knows besides the allowed ones (a part of system.table_functions).
ENGINE_TABLE_FUNCTIONS = {*ALLOWED_TABLE_FUNCTIONS, "file", "url", "s3", "remote", "mysql",
                          "loop", "merge", "python", "executable"}


def dump(text: str) -> list[str]:
    return text.strip("\n").splitlines()


SELECT_FROM_FILE = dump("""
SelectWithUnionQuery (children 2)
 ExpressionList (children 1)
  SelectQuery (children 2)
   ExpressionList (children 1)
    Asterisk
   TablesInSelectQuery (children 1)
    TablesInSelectQueryElement (children 1)
     TableExpression (children 1)
      Function file (alias f) (children 1)
       ExpressionList (children 2)
        Literal '/etc/passwd'
        Literal 'LineAsString'
 Identifier Native
""")

# SELECT * FROM system.tables AS t WHERE name IN t2 SETTINGS max_threads = 1
SELECT_TABLES = dump("""
SelectWithUnionQuery (children 2)
 ExpressionList (children 1)
  SelectQuery (children 4)
   ExpressionList (children 1)
    Asterisk
   TablesInSelectQuery (children 1)
    TablesInSelectQueryElement (children 1)
     TableExpression (children 1)
      TableIdentifier system.tables (alias t)
   Function in (children 1)
    ExpressionList (children 2)
     Identifier name
     Identifier t2
   Set
 Identifier Native
""")


def inspect(lines: list[str], settings: int = 0) -> tuple[str, ...]:
    return inspect_tree(parse_ast(lines), ENGINE_TABLE_FUNCTIONS, settings).tables


def test_parse_reads_kinds_names_and_aliases() -> None:
    tree = parse_ast(SELECT_FROM_FILE)
    assert tree.kind == "SelectWithUnionQuery"
    function = tree.children[0].children[0].children[1].children[0].children[0].children[0]
    assert (function.kind, function.text) == ("Function", "file")
    assert [c.text for c in function.children[0].children] == ["'/etc/passwd'", "'LineAsString'"]


@pytest.mark.parametrize(
    "lines",
    [
        [],
        # a child more than declared: a name that carried a line break
        dump("""
SelectWithUnionQuery (children 1)
 TableIdentifier touchpoints
 Identifier y
"""),
        # a child less than declared
        dump("""
SelectWithUnionQuery (children 2)
 ExpressionList (children 1)
"""),
        # a node closed before its children came
        dump("""
SelectWithUnionQuery (children 2)
 ExpressionList (children 1)
 Identifier Native
"""),
        # two levels at once
        dump("""
SelectWithUnionQuery (children 1)
   Identifier x
"""),
        # a second root
        dump("""
SelectWithUnionQuery
SelectWithUnionQuery
"""),
    ],
)
def test_a_dump_of_unexpected_shape_is_refused(lines: list[str]) -> None:
    with pytest.raises(QueryRejectedError):
        parse_ast(lines)


def test_a_table_function_that_reaches_out_is_refused_in_from() -> None:
    with pytest.raises(QueryRejectedError, match=r"table function file\(\) reaches outside"):
        inspect(SELECT_FROM_FILE)


@pytest.mark.parametrize("name", sorted(ALLOWED_TABLE_FUNCTIONS))
def test_the_generating_table_functions_pass(name: str) -> None:
    assert inspect([line.replace("Function file", f"Function {name}")
                    for line in SELECT_FROM_FILE]) == ()


@pytest.mark.parametrize("name", ["FILE", "File", "URL", "unknownFunction", "mergeTreeIndex"])
def test_any_other_name_in_from_is_refused_whatever_its_case(name: str) -> None:
    with pytest.raises(QueryRejectedError, match="reaches outside"):
        inspect([line.replace("Function file", f"Function {name}") for line in SELECT_FROM_FILE])


def test_a_table_function_is_refused_as_an_argument_and_as_a_plain_function() -> None:
    # SELECT * FROM view(SELECT 1) WHERE 1 IN (SELECT 1 FROM loop(url('x')))
    # is caught at loop (not allowed) and at url; `SELECT file('x')` at file
    nested = dump("""
SelectWithUnionQuery (children 1)
 ExpressionList (children 1)
  SelectQuery (children 2)
   ExpressionList (children 1)
    Function file (children 1)
     ExpressionList (children 1)
      Literal 'x'
   TablesInSelectQuery (children 1)
    TablesInSelectQueryElement (children 1)
     TableExpression (children 1)
      Function numbers (children 1)
       ExpressionList (children 1)
        Function url (children 1)
         ExpressionList (children 1)
          Literal 'http://x'
""")
    with pytest.raises(QueryRejectedError, match=r"file\(\) reaches outside"):
        inspect(nested)
    without_file = [line.replace("Function file", "Function lower") for line in nested]
    with pytest.raises(QueryRejectedError, match=r"url\(\) reaches outside"):
        inspect(without_file)


def test_explain_table_override_names_a_table_function_outside_from() -> None:
    lines = dump("""
Explain EXPLAIN TABLE OVERRIDE (children 2)
 Function mysql (children 1)
  ExpressionList (children 1)
   Literal 'a'
 Identifier Native
""")
    with pytest.raises(QueryRejectedError):
        inspect(lines)


@pytest.mark.parametrize("name", ["file", "addressToLine", "hasColumnInTable", "joinGet"])
def test_functions_that_read_files_or_named_tables_are_refused(name: str) -> None:
    lines = dump(f"""
SelectWithUnionQuery (children 1)
 ExpressionList (children 1)
  SelectQuery (children 1)
   ExpressionList (children 1)
    Function {name} (children 1)
     ExpressionList (children 1)
      Literal 'x'
""")
    with pytest.raises(QueryRejectedError, match="reaches outside"):
        inspect(lines)


def test_table_names_are_collected_from_from_in_and_exists() -> None:
    assert inspect(SELECT_TABLES, settings=1) == ("system.tables", "t2")
    exists = dump("""
ExistsTableQuery system tables (children 3)
 Identifier system
 Identifier tables
 Identifier Native
""")
    assert inspect(exists) == ("system.tables",)
    unqualified = dump("""
ShowCreateTableQuery  touchpoints (children 2)
 Identifier touchpoints
 Identifier Native
""")
    assert inspect(unqualified) == ("touchpoints",)


def test_every_settings_clause_must_be_read_from_the_text() -> None:
    with pytest.raises(QueryRejectedError, match="SETTINGS"):
        inspect(SELECT_TABLES, settings=0)
    # the options of an EXPLAIN are no settings
    explain = dump("""
Explain EXPLAIN PIPELINE (children 2)
 Set
 SelectWithUnionQuery (children 1)
  ExpressionList (children 1)
   SelectQuery (children 1)
    ExpressionList (children 1)
     Literal UInt64_1
""")
    assert inspect(explain) == ()


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("ShowColumns", "system.columns"),
        ("ShowIndexes", "system.columns"),
        ("InsertQuery", "may not run here"),
        ("CreateQuery", "may not run here"),
    ],
)
def test_statement_kinds_outside_the_list_are_refused(kind: str, message: str) -> None:
    with pytest.raises(QueryRejectedError, match=message):
        inspect([f"{kind} (children 1)", " Identifier Native"])
    with pytest.raises(QueryRejectedError):
        inspect(["Explain EXPLAIN AST (children 1)", f" {kind}"])


@pytest.mark.parametrize(
    ("canonical", "clauses"),
    [
        ("SELECT 1", []),
        ("SELECT 1 SETTINGS max_threads = 1", [["max_threads"]]),
        ("SELECT 1 SETTINGS max_threads = 1, join_algorithm = 'hash'",
         [["max_threads", "join_algorithm"]]),
        ("SELECT * FROM (SELECT 1 SETTINGS max_threads = 2) AS t WHERE x = 1 "
         "SETTINGS final = 1", [["max_threads"], ["final"]]),
        # a value the reader does not know does not hide the setting after it
        ("SELECT 1 SETTINGS max_threads = DEFAULT, readonly = 0", [["max_threads", "readonly"]]),
        ("SELECT 1 SETTINGS a = [1, 2], `b` = {'k': 1}, c = -1", [["a", "b", "c"]]),
        ("SELECT 1 SETTINGS a = 1 UNION ALL SELECT 2 WHERE x = 1", [["a"]]),
        # a column called settings
        ("SELECT settings FROM t WHERE settings = 1", []),
    ],
)
def test_settings_clauses(canonical: str, clauses: list[list[str]]) -> None:
    assert settings_clauses(lex(canonical)[0]) == clauses


def test_canonical_text_checks() -> None:
    assert check_canonical("SELECT 1 SETTINGS max_threads = 1", {}) == 1
    for bad in ("SELECT 1 SETTINGS allow_introspection_functions = 1",
                "SELECT 1 SETTINGS max_threads = 1, readonly = 0",
                "SELECT * FROM (SELECT 1 SETTINGS allow_ddl = 1)"):
        with pytest.raises(QueryRejectedError, match="may not be changed"):
            check_canonical(bad, {})
    with pytest.raises(QueryRejectedError):
        check_canonical("SELECT 1 INTO OUTFILE 'x'", {})
    with pytest.raises(QueryRejectedError):
        check_canonical("SELECT 1 FORMAT JSON", {})
    for name in ("`x\\ny`", "`a (alias b)`", "`tab\\tname`"):
        with pytest.raises(QueryRejectedError, match="rename it"):
            check_canonical(f"SELECT 1 AS {name}", {})
    # an Identifier parameter is a name too
    check_canonical("SELECT * FROM {t:Identifier}", {"t": "touchpoints"})
    with pytest.raises(QueryRejectedError, match="rename it"):
        check_canonical("SELECT * FROM {t:Identifier}", {"t": "x\nTableIdentifier y"})


def test_names_the_embedded_engine_would_read_as_files() -> None:
    files = {"plain", "data.csv", "csv"}

    def exists(path: str) -> bool:
        return path in files

    known = frozenset({"touchpoints", "default.touchpoints", "system.tables", "plain"})
    # tables, and unknown names that name no file (CTEs, or an unknown table the engine
    # reports), pass; a table of the current database wins over a file of its name
    check_table_names(["touchpoints", "system.tables", "my_cte", "plain"], known, exists)
    for name in ("/etc/passwd", "../secret", "data.csv", "default.csv", "x.csv", "*.csv",
                 "pass{wd,word}"):
        with pytest.raises(QueryRejectedError, match="read it as a file"):
            check_table_names([name], frozenset({"touchpoints"}), exists)
    with pytest.raises(QueryRejectedError, match="read it as a file"):
        check_table_names(["plain"], frozenset(), exists)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM system.tables",
        "SELECT name FROM system.parts WHERE table = 'touchpoints'",
        "SHOW TABLES FROM system",
        "SHOW CREATE TABLE touchpoints",
    ],
)
def test_system_tables_and_show_create_pass_the_lexical_gate(sql: str) -> None:
    assert check_readonly(sql) == sql


@pytest.mark.parametrize("sql", ["SYSTEM FLUSH LOGS", "CREATE TABLE x (a Int8) ENGINE = File(CSV)",
                                 "SELECT 1 FROM t WHERE CREATE", "SHOW TABLES; CREATE TABLE x"])
def test_system_statements_and_create_stay_refused(sql: str) -> None:
    with pytest.raises(QueryRejectedError):
        check_readonly(sql)


# ---- the lexical check of check_readonly ---------------------------------------------


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
