"""The analysts' SQL gate: one read-only statement that reads nothing but the warehouse."""

from __future__ import annotations

import itertools
import os
import re
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from projections.clickhouse.client import QueryResult, Warehouse, WarehouseError, engine_dirs

# ---- what analysts may use ------------------------------------------------------------

# The statements an analyst may run. EXISTS and DESC are spellings of read-only checks.
READ_ONLY_KEYWORDS = frozenset({"SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXPLAIN", "EXISTS"})
# Words that have no business in a read-only statement wherever they stand (outside
# strings, quoted names and comments). They also catch `EXPLAIN <write>` forms and
# `SELECT ... INTO OUTFILE`, which chDB, being the client too, would carry out. SYSTEM
# is not one of them: `system.tables` is a database, and a SYSTEM statement fails the
# first-word rule anyway.
_FORBIDDEN_WORDS = frozenset(
    {
        "INSERT", "CREATE", "DROP", "ALTER", "TRUNCATE", "RENAME", "OPTIMIZE",
        "KILL", "GRANT", "REVOKE", "ATTACH", "DETACH", "DELETE", "UPDATE", "EXCHANGE",
        "UNDROP", "BACKUP", "RESTORE", "OUTFILE", "USE", "SET",
    }
)  # fmt: skip

# Statement kinds, as the engine's parser names them (EXPLAIN AST), an analyst may run.
# SHOW COLUMNS and SHOW INDEXES are left out: their AST does not name the table, so
# the gate could not check it (system.columns answers the same question).
ALLOWED_STATEMENTS = frozenset(
    {
        "SelectWithUnionQuery", "DescribeQuery", "Explain", "ShowTables", "ShowFunctions",
        "ShowEngineQuery", "ShowSetting", "ShowProcesslistQuery",
        "ExistsTableQuery", "ExistsViewQuery", "ExistsDictionaryQuery", "ExistsDatabaseQuery",
        "ShowCreateTableQuery", "ShowCreateViewQuery", "ShowCreateDictionaryQuery",
        "ShowCreateDatabaseQuery",
    }
)  # fmt: skip
# Of those, the ones whose first line names a table as `<database> <table>`.
_NAMES_A_TABLE = frozenset(
    {
        "ExistsTableQuery", "ExistsViewQuery", "ExistsDictionaryQuery",
        "ShowCreateTableQuery", "ShowCreateViewQuery", "ShowCreateDictionaryQuery",
    }
)  # fmt: skip

# Table functions that generate rows or read a subquery, and nothing else. Every other
# one the engine knows (system.table_functions: file, url, s3, remote, mysql, executable,
# python, ... and whatever a later version adds) is refused: an allow-list, so a new
# engine version cannot widen what analysts reach.
ALLOWED_TABLE_FUNCTIONS = frozenset(
    {
        "numbers", "numbers_mt", "zeros", "zeros_mt", "generate_series", "generateSeries",
        "generateRandom", "values", "null", "view", "primes", "format",
    }
)  # fmt: skip
# Ordinary functions that read a file, the engine's binary or a table named by a string
# (which the embedded engine may resolve to a file). Compared in lower case.
DENIED_FUNCTIONS = frozenset(
    {
        "file", "catboostevaluate", "naivebayesclassifier", "addresstoline",
        "addresstolinewithinlines", "addresstosymbol", "hascolumnintable", "joinget",
        "joingetornull", "showcertificate",
    }
)  # fmt: skip
# The functions whose right-hand argument may be a bare table name (`x IN t`).
_IN_FUNCTIONS = frozenset(
    {
        "in", "notin", "globalin", "globalnotin", "nullin", "notnullin", "globalnullin",
        "globalnotnullin",
    }
)  # fmt: skip

# Settings a statement may carry in a SETTINGS clause: limits and performance knobs
# that change neither what can be read nor what the gate enforces below.
ALLOWED_SETTINGS = frozenset(
    {
        "max_threads", "max_execution_time", "max_block_size", "max_rows_to_read",
        "max_bytes_to_read", "read_overflow_mode", "max_result_rows", "max_result_bytes",
        "result_overflow_mode", "timeout_overflow_mode", "max_rows_to_group_by",
        "group_by_overflow_mode", "max_bytes_before_external_group_by",
        "max_bytes_before_external_sort", "max_rows_to_sort", "sort_overflow_mode",
        "join_algorithm", "join_use_nulls", "join_default_strictness", "final",
        "do_not_merge_across_partitions_select_final", "optimize_aggregation_in_order",
        "optimize_read_in_order", "optimize_move_to_prewhere",
        "aggregate_functions_null_for_empty", "transform_null_in", "cast_keep_nullable",
        "session_timezone", "union_default_mode", "count_distinct_implementation",
        "prefer_column_name_to_alias", "group_by_use_nulls", "use_skip_indexes",
        "force_primary_key", "limit", "offset", "extremes",
    }
)  # fmt: skip

# Sent with every analyst statement. A statement cannot lower `readonly` (the engine
# refuses), nor `allow_ddl` once it is 0; it cannot turn introspection back on because
# that setting is not in ALLOWED_SETTINGS. readonly=2, not 1: 1 would refuse every
# SETTINGS clause (max_threads, ...), and does not stop file() as a plain function or the
# embedded engine's file-backed database anyway, so the gate below is needed either way.
ENFORCED_SETTINGS: Mapping[str, int] = {
    "readonly": 2,
    "allow_ddl": 0,
    "allow_introspection_functions": 0,
}
READONLY_LEVEL = ENFORCED_SETTINGS["readonly"]

# How long the list of the warehouse's tables is trusted before it is read again.
KNOWN_TABLES_SECONDS = 30.0

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
_HEREDOC = re.compile(r"\$([A-Za-z0-9_]*)\$")
_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_GLOB = re.compile(r"[*?{}\[\]]")
_IDENTIFIER_PARAMETER = re.compile(
    r"\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*:\s*Identifier\s*\}", re.IGNORECASE
)
_REFERENCE = "see 'Safe SQL' in the README"


class QueryRejectedError(WarehouseError):
    """A statement offered as read-only is not, or reaches outside the warehouse."""


# ---- the lexical gate -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Token:
    """A code token: `word` (as written), `quoted` (a '...', "...", `...` or $$ literal
    or name, with its quotes) or `punct` (one character)."""

    kind: str
    text: str

    @property
    def upper(self) -> str:
        return self.text.upper() if self.kind == "word" else self.text


def _skip_quoted(sql: str, i: int) -> int:
    """Index after the '...', "..." or `...` starting at i (backslash or doubled escapes)."""
    quote, n = sql[i], len(sql)
    i += 1
    while i < n:
        if sql[i] == "\\":
            i += 2
        elif sql[i] == quote:
            if i + 1 < n and sql[i + 1] == quote:
                i += 2
            else:
                return i + 1
        else:
            i += 1
    raise QueryRejectedError("unterminated quote in the statement")


def _skip_block_comment(sql: str, i: int) -> int:
    """Index after the /* */ comment starting at i; ClickHouse nests them."""
    depth, n = 0, len(sql)
    while i < n:
        if sql.startswith("/*", i):
            depth += 1
            i += 2
        elif sql.startswith("*/", i):
            depth -= 1
            i += 2
            if depth == 0:
                return i
        else:
            i += 1
    raise QueryRejectedError("unterminated /* comment in the statement")


def lex(sql: str) -> tuple[list[Token], int, list[int]]:
    """Code tokens of a statement, the end of its last one, and where semicolons stand.

    The lexing follows ClickHouse's: '...' strings, "..." and `...` names, $tag$...$tag$
    heredocs, -- and `# `/`#!` line comments, nested /* */ comments. A mismatch would
    matter only in a way that reads a string where the server reads code, so every rule
    is the server's own; the engine's parser then checks the statement again.
    """
    tokens: list[Token] = []
    semicolons: list[int] = []
    end_of_code = 0
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        start = i
        if ch.isspace():
            i += 1
            continue
        if sql.startswith("--", i) or (ch == "#" and sql[i + 1 : i + 2] in (" ", "!")):
            newline = sql.find("\n", i)
            i = n if newline < 0 else newline + 1
            continue
        if sql.startswith("/*", i):
            i = _skip_block_comment(sql, i)
            continue
        if ch in "'\"`":
            i = _skip_quoted(sql, i)
            tokens.append(Token("quoted", sql[start:i]))
        elif ch == "$" and (heredoc := _HEREDOC.match(sql, i)) is not None:
            close = sql.find(heredoc.group(), heredoc.end())
            if close < 0:
                raise QueryRejectedError("unterminated $$ string in the statement")
            i = close + len(heredoc.group())
            tokens.append(Token("quoted", sql[start:i]))
        elif ch.isalpha() or ch == "_":
            word = _WORD.match(sql, i)
            assert word is not None
            tokens.append(Token("word", word.group()))
            i = word.end()
        else:
            i += 1
            if ch == ";":
                semicolons.append(start)
                continue
            tokens.append(Token("punct", ch))
        end_of_code = i
    return tokens, end_of_code, semicolons


def _check_tokens(tokens: Sequence[Token]) -> None:
    words = [t.upper for t in tokens if t.kind == "word"]
    if not words:
        raise QueryRejectedError("empty statement")
    if words[0] not in READ_ONLY_KEYWORDS:
        allowed = ", ".join(sorted(READ_ONLY_KEYWORDS))
        raise QueryRejectedError(
            f"only read-only statements may run here ({allowed}), not {words[0]}"
        )
    # SHOW CREATE TABLE only shows a definition
    pairs = enumerate(itertools.pairwise(words))
    shown = {i + 1 for i, pair in pairs if pair == ("SHOW", "CREATE")}
    bad = sorted({w for i, w in enumerate(words) if w in _FORBIDDEN_WORDS and i not in shown})
    if bad:
        raise QueryRejectedError(f"{bad[0]} is not allowed in a read-only statement")
    for token, following in itertools.pairwise(tokens):
        # the FORMAT clause, not the format() function
        if token.upper == "FORMAT" and following.text != "(":
            raise QueryRejectedError("leave out FORMAT: results come back as rows (see --format)")


def check_readonly(sql: str) -> str:
    """The statement, minus trailing semicolons and comments, if it is one read-only statement.

    Raises QueryRejectedError otherwise. Lexical, and so only the first gate: the first
    word must be a read-only verb, no ';' may separate statements, and no write keyword
    (nor FORMAT) may stand anywhere in code. So it also refuses a harmless query that
    uses such a word as a bare name (quote it: `update`). What a statement reads is
    checked by `inspect_statement` on the engine's own parse.
    """
    tokens, end_of_code, semicolons = lex(sql)
    if any(position < end_of_code for position in semicolons):
        raise QueryRejectedError("one statement at a time: remove the ';' between statements")
    _check_tokens(tokens)
    return sql[:end_of_code].lstrip()


# ---- the engine's parse ---------------------------------------------------------------

_LINE = re.compile(r"(?P<indent> *)(?P<kind>\S+)(?P<rest>.*)")
_CHILDREN = re.compile(r" \(children (\d+)\)$")
_ALIAS = re.compile(r" \(alias [^()]*\)$")


@dataclass(slots=True)
class Node:
    """One node of `EXPLAIN AST`: its kind (`Function`, `TableIdentifier`, ...), the text
    after the kind (a name, a literal) without its alias, and its children."""

    kind: str
    text: str
    children: list[Node] = field(default_factory=list)

    def walk(self) -> Iterator[tuple[Node, Node | None]]:
        """Every node below and including this one, with its parent."""
        stack: list[tuple[Node, Node | None]] = [(self, None)]
        while stack:
            node, parent = stack.pop()
            yield node, parent
            stack.extend((child, node) for child in reversed(node.children))


def parse_ast(lines: Sequence[str]) -> Node:
    """The tree of an `EXPLAIN AST` dump, one node per line, a space of indent per level.

    Each line states its number of children; a dump whose shape disagrees (a name that
    carried a line break, say) is refused rather than guessed at.
    """
    if not lines:
        raise QueryRejectedError("the engine returned no parse of the statement")
    root: Node | None = None
    # the open nodes, by depth, with the children they still expect
    path: list[tuple[Node, int]] = []
    for line in lines:
        match = _LINE.fullmatch(line)
        if match is None:
            raise _unreadable()
        depth = len(match["indent"])
        rest = match["rest"]
        declared = _CHILDREN.search(rest)
        expected = int(declared.group(1)) if declared else 0
        if declared:
            rest = rest[: declared.start()]
        rest = _ALIAS.sub("", rest)
        node = Node(match["kind"], rest[1:] if rest.startswith(" ") else rest)
        if depth == 0:
            if root is not None:
                raise _unreadable()
            root = node
        else:
            if depth > len(path) or any(left for _, left in path[depth:]):
                raise _unreadable()  # too deep, or a node closed short of its children
            del path[depth:]
            parent, left = path[depth - 1]
            if left == 0:
                raise _unreadable()
            parent.children.append(node)
            path[depth - 1] = (parent, left - 1)
        path.append((node, expected))
    if root is None or any(left for _, left in path):
        raise _unreadable()
    return root


def _unreadable() -> QueryRejectedError:
    return QueryRejectedError(
        "the engine's parse of the statement has an unexpected shape (a name with a line "
        "break?): rename the column or table in the statement"
    )


# ---- what a statement reads -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Inspection:
    """What `inspect_tree` found: the table names the statement reads (plain tables,
    common table expressions or unknown names: the engine resolves them)."""

    tables: tuple[str, ...]


def _statement_of(node: Node) -> Node | None:
    """The statement an EXPLAIN explains (its options come as a `Set` child)."""
    for child in node.children:
        if child.kind in ALLOWED_STATEMENTS or child.kind.endswith("Query"):
            return child
    return None


def _check_statement_kind(root: Node) -> None:
    node: Node | None = root
    while node is not None and node.kind == "Explain":
        inner = _statement_of(node)
        if inner is None:
            raise QueryRejectedError(
                f"{node.text or 'this EXPLAIN'} explains no read-only statement: explain a "
                "SELECT"
            )
        node = inner
    assert node is not None
    if node.kind not in ALLOWED_STATEMENTS:
        hint = (
            "query system.columns or DESCRIBE TABLE instead"
            if node.kind in ("ShowColumns", "ShowIndexes")
            else "use SELECT, WITH, SHOW TABLES, DESCRIBE, EXISTS or EXPLAIN"
        )
        raise QueryRejectedError(f"{node.kind} statements may not run here: {hint}")


def _named_table(node: Node) -> str | None:
    """`db.table` or `table` of an EXISTS / SHOW CREATE, from `<kind> <db> <table>`."""
    if node.kind not in _NAMES_A_TABLE:
        return None
    database, sep, table = node.text.partition(" ")
    if not sep or " " in table or not table:
        raise QueryRejectedError(
            f"cannot read the table name in {node.kind}: use a name without spaces"
        )
    return f"{database}.{table}" if database else table


def _explain_options(root: Node) -> set[int]:
    # The `Set` children of an EXPLAIN are its options (graph = 1, ...), not settings.
    return {
        id(child)
        for node, _ in root.walk()
        if node.kind == "Explain"
        for child in node.children
        if child.kind == "Set"
    }


def inspect_tree(root: Node, table_functions: Iterable[str], settings_clauses: int) -> Inspection:
    """Refuse what reaches outside the warehouse; return the table names read.

    Every `Function` in a FROM (a table function) must be in ALLOWED_TABLE_FUNCTIONS;
    a function named like any other table function, wherever it stands (an argument of
    another table function, `EXPLAIN TABLE OVERRIDE mysql(...)`, the plain function
    file()), is refused, as are DENIED_FUNCTIONS. `settings_clauses` is the number of
    SETTINGS clauses read from the statement's text: it must match the parse, so that
    none escapes the settings check.
    """
    _check_statement_kind(root)
    allowed = {name.lower() for name in ALLOWED_TABLE_FUNCTIONS}
    reaching = {name.lower() for name in table_functions} - allowed
    tables: list[str] = []
    options = _explain_options(root)
    settings_nodes = 0
    for node, parent in root.walk():
        if node.kind == "Function":
            name = node.text
            lowered = name.lower()
            in_from = parent is not None and parent.kind == "TableExpression"
            if in_from and lowered not in allowed:
                raise _outside(f"the table function {name}()")
            if lowered in reaching or lowered in DENIED_FUNCTIONS:
                raise _outside(f"{name}()")
            if lowered in _IN_FUNCTIONS and node.children:
                arguments = node.children[0].children
                if len(arguments) == 2 and arguments[1].kind == "Identifier":
                    tables.append(arguments[1].text)
        elif node.kind == "TableIdentifier":
            tables.append(node.text)
        elif node.kind == "Set" and id(node) not in options:
            settings_nodes += 1
        named = _named_table(node)
        if named is not None:
            tables.append(named)
    if settings_nodes != settings_clauses:
        raise QueryRejectedError(
            "cannot tell which SETTINGS the statement sets: write each as "
            "SETTINGS name = value at the end of a SELECT"
        )
    return Inspection(tuple(dict.fromkeys(tables)))


def _outside(what: str) -> QueryRejectedError:
    allowed = ", ".join(sorted(ALLOWED_TABLE_FUNCTIONS))
    return QueryRejectedError(
        f"{what} reaches outside the warehouse and may not run here: read the warehouse's "
        f"tables (system.* included) or the table functions {allowed} ({_REFERENCE})"
    )


# ---- the canonical text -----------------------------------------------------------------


# Where a SETTINGS list ends, at its own depth: the next clause or query of the statement.
_CLAUSE_WORDS = frozenset({"UNION", "EXCEPT", "INTERSECT", "FORMAT", "SELECT", "FROM", "WHERE"})


def settings_clauses(tokens: Sequence[Token]) -> list[list[str]]:
    """The names set by each `SETTINGS name = value, ...` clause of a canonical statement.

    The engine's formatter writes the keyword in capitals and each setting as
    `name = value`. Values are literals, so every `name =` from the keyword to the end of
    its parentheses (or the next clause) is a setting: reading too many can only refuse
    a statement, never let a setting through unread.
    """
    clauses: list[list[str]] = []
    for i, token in enumerate(tokens):
        if not (token.kind == "word" and token.text == "SETTINGS" and _assignment(tokens, i + 1)):
            continue
        names: list[str] = []
        depth = 0
        for j in range(i + 1, len(tokens)):
            text = tokens[j].text
            if tokens[j].kind == "punct" and text in "([{":
                depth += 1
            elif tokens[j].kind == "punct" and text in ")]}":
                depth -= 1
                if depth < 0:
                    break
            elif depth == 0 and tokens[j].kind == "word" and text in _CLAUSE_WORDS:
                break
            elif _assignment(tokens, j):
                names.append(_name_text(tokens[j]))
        clauses.append(names)
    return clauses


def _assignment(tokens: Sequence[Token], i: int) -> bool:
    return (
        i + 1 < len(tokens)
        and (tokens[i].kind == "word" or tokens[i].text[:1] in "`\"")
        and tokens[i + 1].text == "="
        and (i + 2 >= len(tokens) or tokens[i + 2].text != "=")
    )


def _name_text(token: Token) -> str:
    return token.text[1:-1] if token.kind == "quoted" else token.text


def check_canonical(canonical: str, parameters: Mapping[str, Any]) -> int:
    """Checks on the engine's own formatting of the statement; returns its number of
    SETTINGS clauses (for `inspect_tree`).

    Refuses settings outside ALLOWED_SETTINGS, the FORMAT and INTO OUTFILE clauses, and
    names that could make the one-line-per-node parse ambiguous: a quoted name or an
    Identifier parameter holding a backslash escape, a control character or parentheses.
    """
    tokens, _, semicolons = lex(canonical)
    if semicolons:
        raise QueryRejectedError("only one read-only statement may run here")
    words = [t.upper for t in tokens if t.kind == "word"]
    if not words or words[0] not in READ_ONLY_KEYWORDS or "OUTFILE" in words:
        raise QueryRejectedError("only one read-only statement may run here")
    _check_tokens(tokens)
    for token in tokens:
        if token.kind == "quoted" and token.text[0] in "`\"" and _unsafe_name(token.text[1:-1]):
            raise _odd_name(token.text)
    for name in _IDENTIFIER_PARAMETER.findall(canonical):
        value = parameters.get(name)
        if isinstance(value, str) and (_unsafe_name(value) or "\\" in value):
            raise _odd_name(repr(value))
    clauses = settings_clauses(tokens)
    for names in clauses:
        for name in names:
            if name not in ALLOWED_SETTINGS:
                raise QueryRejectedError(
                    f"the setting {name} may not be changed here; a statement may set "
                    f"{', '.join(sorted(ALLOWED_SETTINGS))}"
                )
    return len(clauses)


def _unsafe_name(name: str) -> bool:
    return "\\" in name or "(" in name or ")" in name or any(ord(c) < 32 for c in name)


def _odd_name(name: str) -> QueryRejectedError:
    return QueryRejectedError(
        f"the name {name} holds a backslash, a control character or parentheses: "
        "rename it in the statement"
    )


# ---- names the embedded engine would read as files ---------------------------------------


def check_table_names(
    names: Iterable[str],
    known: frozenset[str],
    exists: Callable[[str], bool],
) -> None:
    """Refuse table names that the embedded engine could resolve to a file.

    chDB's default database falls back to the file system: a name that is no table
    (`'/etc/passwd'`, `plain`, `default.x`) is read as the file of that path, relative to
    the directory the engine started in. `known` holds the tables of the current database
    by name and every table as `database.name`; `exists(path)` says whether a path names
    a file or directory there. A name of the current database's own tables resolves to
    the table first, so it is fine whatever files exist. Any other name is fine only when
    neither it nor what follows any of its dots names an existing path, and when it has
    no '/' or glob characters (which the file fallback would expand).
    """
    for name in names:
        if "." not in name and name in known:
            continue
        if "/" in name or _GLOB.search(name) or "\x00" in name:
            raise _file_name(name)
        candidates = [name]
        if name not in known:
            parts = name.split(".")
            candidates += [".".join(parts[k:]) for k in range(1, len(parts))]
        if any(candidate and exists(candidate) for candidate in candidates):
            raise _file_name(name)


def _file_name(name: str) -> QueryRejectedError:
    return QueryRejectedError(
        f"{name!r} is no table of the warehouse and the embedded engine would read it as a "
        f"file: read the warehouse's tables (SHOW TABLES) ({_REFERENCE})"
    )


# ---- the I/O: one statement through the gate ---------------------------------------------


# Statements whose inspection is kept, per warehouse: the HTTP API serves the same
# analysis statements again and again, with other values.
INSPECTED_STATEMENTS = 256


@dataclass
class _Catalog:
    """What the gate reads from a warehouse once (table functions) or now and then
    (tables), and the statements it inspected lately."""

    table_functions: frozenset[str] = frozenset()
    known: frozenset[str] = frozenset()
    known_at: float = float("-inf")
    inspected: OrderedDict[tuple[str, tuple[tuple[str, str], ...]], tuple[str, Inspection]] = (
        field(default_factory=OrderedDict)
    )
    lock: threading.Lock = field(default_factory=threading.Lock)


_catalogs: weakref.WeakKeyDictionary[Warehouse, _Catalog] = weakref.WeakKeyDictionary()
_catalogs_lock = threading.Lock()


def _catalog(warehouse: Warehouse) -> _Catalog:
    with _catalogs_lock:
        catalog = _catalogs.get(warehouse)
        if catalog is None:
            catalog = _catalogs[warehouse] = _Catalog()
    with catalog.lock:
        if not catalog.table_functions:
            rows = warehouse.query("SELECT name FROM system.table_functions").rows
            catalog.table_functions = frozenset(str(row[0]) for row in rows)
    return catalog


def _known_tables(warehouse: Warehouse, catalog: _Catalog) -> frozenset[str]:
    # A table created since the last read is only missing from the list for a while:
    # its name then counts as unknown, which can refuse a statement, never admit one.
    with catalog.lock:
        if time.monotonic() - catalog.known_at < KNOWN_TABLES_SECONDS:
            return catalog.known
        rows = warehouse.query(
            "SELECT database, name, database = currentDatabase() FROM system.tables"
        ).rows
        known = {f"{database}.{name}" for database, name, _ in rows}
        known.update(str(name) for _, name, current in rows if current)
        catalog.known = frozenset(known)
        catalog.known_at = time.monotonic()
        return catalog.known


def _exists_near_engine(path: str) -> bool:
    # The engine resolves relative names against the directory it started in; the
    # process may have moved since, so every such directory counts, and the current one.
    return any(os.path.lexists(os.path.join(base, path)) for base in {*engine_dirs(), os.getcwd()})


def inspect_statement(
    warehouse: Warehouse, statement: str, parameters: Mapping[str, Any] | None = None
) -> str:
    """The engine's canonical text of `statement` once every check passed.

    The engine formats the statement (formatQuerySingleLine, which also refuses several
    statements) with the text bound as a value, so nothing of it runs; that text is
    checked (`check_canonical`), parsed by the engine (EXPLAIN AST, which only parses)
    and the tree checked (`inspect_tree`); on chDB the table names are checked against
    the file fallback (`check_table_names`), every time, since files come and go. The
    canonical text is what then runs, so what was checked is what runs.
    """
    bound = dict(parameters or {})
    catalog = _catalog(warehouse)
    # Identifier parameters change the parse (they name tables); other values do not.
    key = (statement, tuple(sorted(
        (name, str(bound.get(name))) for name in _IDENTIFIER_PARAMETER.findall(statement))))
    with catalog.lock:
        cached = catalog.inspected.get(key)
        if cached is not None:
            catalog.inspected.move_to_end(key)
    if cached is None:
        cached = _inspect(warehouse, catalog, statement, bound)
        with catalog.lock:
            catalog.inspected[key] = cached
            while len(catalog.inspected) > INSPECTED_STATEMENTS:
                catalog.inspected.popitem(last=False)
    canonical, found = cached
    if warehouse.engine == "chdb" and found.tables:
        check_table_names(found.tables, _known_tables(warehouse, catalog), _exists_near_engine)
    return canonical


def _inspect(
    warehouse: Warehouse, catalog: _Catalog, statement: str, bound: Mapping[str, Any]
) -> tuple[str, Inspection]:
    canonical = str(
        warehouse.query(
            "SELECT formatQuerySingleLine({statement:String})", {"statement": statement}
        ).scalar()
    )
    clauses = check_canonical(canonical, bound)
    # Without settings: chDB sends settings as a SETTINGS clause, which would show in the
    # parse. EXPLAIN AST only parses, so there is nothing to enforce yet.
    dump = warehouse.query(f"EXPLAIN AST {canonical}", bound)
    tree = parse_ast([str(row[0]) for row in dump.rows])
    return canonical, inspect_tree(tree, catalog.table_functions, clauses)


def enforced_settings(warehouse: Warehouse) -> dict[str, int]:
    """ENFORCED_SETTINGS that this engine knows (an older server lacks some)."""
    return {k: v for k, v in ENFORCED_SETTINGS.items() if warehouse.knows_setting(k)}


def run_readonly(
    warehouse: Warehouse, sql: str, parameters: Mapping[str, Any] | None = None
) -> QueryResult:
    """Run an analyst's statement if it is read-only and reads only the warehouse.

    Three gates: the lexical `check_readonly`, the engine-parsed `inspect_statement`,
    and ENFORCED_SETTINGS on the query itself (a server adds its user's profile).
    """
    statement = check_readonly(sql)
    canonical = inspect_statement(warehouse, statement, parameters)
    return warehouse.query(canonical, parameters, settings=enforced_settings(warehouse))
