"""The read-only gate for an analyst's ad-hoc SQL (journey sql, POST /query)."""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from typing import Any

from projections.clickhouse.client import QueryResult, Warehouse, WarehouseError

# The statements an analyst may run. EXISTS and DESC are spellings of read-only checks.
READ_ONLY_KEYWORDS = frozenset({"SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXPLAIN", "EXISTS"})
# Words that have no business in a read-only statement wherever they stand (outside
# strings, quoted names and comments). They also catch `EXPLAIN <write>` forms and
# `SELECT ... INTO OUTFILE`, which chDB, being the client too, would carry out.
_FORBIDDEN_WORDS = frozenset(
    {
        "INSERT", "CREATE", "DROP", "ALTER", "TRUNCATE", "RENAME", "OPTIMIZE", "SYSTEM",
        "KILL", "GRANT", "REVOKE", "ATTACH", "DETACH", "DELETE", "UPDATE", "EXCHANGE",
        "UNDROP", "BACKUP", "RESTORE", "OUTFILE", "USE", "SET",
    }
)  # fmt: skip
# A server gets this per query; it cannot be lowered by the statement. 2 (not 1) still
# lets a statement carry its own SETTINGS clause (max_threads, ...), but no data or
# schema change. chDB honours it the same way; the statement check comes first anyway.
READONLY_LEVEL = 2
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
_HEREDOC = re.compile(r"\$([A-Za-z0-9_]*)\$")


class QueryRejectedError(WarehouseError):
    """A statement offered as read-only is not."""


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


def _tokens(sql: str) -> tuple[list[str], int, list[int]]:
    """Code tokens of a statement, the end of its last one, and where semicolons stand.

    Tokens are upper-cased words and single punctuation characters; literals count as
    one "'" token. The lexing follows ClickHouse's: '...' strings, "..." and `...`
    names, $tag$...$tag$ heredocs, -- and `# `/`#!` line comments, nested /* */
    comments. A mismatch would matter only in a way that reads a string where the
    server reads code, so every rule is the server's own.
    """
    tokens: list[str] = []
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
            tokens.append("'")
        elif ch == "$" and (heredoc := _HEREDOC.match(sql, i)) is not None:
            close = sql.find(heredoc.group(), heredoc.end())
            if close < 0:
                raise QueryRejectedError("unterminated $$ string in the statement")
            i = close + len(heredoc.group())
            tokens.append("'")
        elif ch.isalpha() or ch == "_":
            word = _WORD.match(sql, i)
            assert word is not None
            tokens.append(word.group().upper())
            i = word.end()
        else:
            i += 1
            if ch == ";":
                semicolons.append(start)
                continue
            tokens.append(ch)
        end_of_code = i
    return tokens, end_of_code, semicolons


def _check_tokens(tokens: Sequence[str]) -> None:
    words = [t for t in tokens if t[0].isalpha() or t[0] == "_"]
    if not words:
        raise QueryRejectedError("empty statement")
    if words[0] not in READ_ONLY_KEYWORDS:
        allowed = ", ".join(sorted(READ_ONLY_KEYWORDS))
        raise QueryRejectedError(
            f"only read-only statements may run here ({allowed}), not {words[0]}"
        )
    bad = sorted(_FORBIDDEN_WORDS.intersection(words))
    if bad:
        raise QueryRejectedError(f"{bad[0]} is not allowed in a read-only statement")
    for word, following in itertools.pairwise(tokens):
        # the FORMAT clause, not the format() function
        if word == "FORMAT" and following != "(":
            raise QueryRejectedError("leave out FORMAT: results come back as rows (see --format)")


def check_readonly(sql: str) -> str:
    """The statement, minus trailing semicolons and comments, if it is one read-only statement.

    Raises QueryRejectedError otherwise. Lexical: the first word must be a read-only
    verb, no ';' may separate statements, and no write keyword (nor FORMAT) may stand
    anywhere in code. So it also refuses a harmless query that uses such a word as a
    bare name (quote it: `update`). It cannot stop table functions such as file() or
    url() from reading what the process can reach.
    """
    tokens, end_of_code, semicolons = _tokens(sql)
    if any(position < end_of_code for position in semicolons):
        raise QueryRejectedError("one statement at a time: remove the ';' between statements")
    _check_tokens(tokens)
    return sql[:end_of_code].lstrip()


def run_readonly(
    warehouse: Warehouse, sql: str, parameters: Mapping[str, Any] | None = None
) -> QueryResult:
    """Run an analyst's statement if it is read-only, with the readonly setting on.

    A server enforces `readonly` itself and its HTTP interface takes one statement per
    request. chDB has no users and would run several statements, so there the engine's
    own parser (formatQuerySingleLine, which refuses multi-statements) confirms what
    check_readonly read before the statement runs.
    """
    statement = check_readonly(sql)
    if warehouse.engine == "chdb":
        canonical = warehouse.query(
            "SELECT formatQuerySingleLine({statement:String})", {"statement": statement}
        ).scalar()
        words = [t for t in _tokens(str(canonical))[0] if t[0].isalpha()]
        if not words or words[0] not in READ_ONLY_KEYWORDS or "OUTFILE" in words:
            raise QueryRejectedError("only one read-only statement may run here")
    return warehouse.query(statement, parameters, settings={"readonly": READONLY_LEVEL})
