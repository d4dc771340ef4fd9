"""Analyst queries: the read-only gate for ad-hoc SQL and named builders with bound values."""

from __future__ import annotations

import base64
import itertools
import re
from collections.abc import Mapping, Sequence
from datetime import date, datetime, time
from decimal import Decimal
from enum import Enum
from ipaddress import IPv4Address, IPv6Address
from typing import Any
from uuid import UUID

from projections.clickhouse.client import QueryResult, Warehouse, WarehouseError
from projections.clickhouse.tables import TOUCHPOINTS

Params = dict[str, Any]

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


def jsonable(value: Any) -> Any:
    """A query value as JSON data: timestamps in ISO 8601, decimals as strings (exact)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Decimal | UUID | IPv4Address | IPv6Address):
        return str(value)
    if isinstance(value, Enum):
        return jsonable(value.value)
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode()
        except UnicodeDecodeError:
            return base64.b64encode(bytes(value)).decode()
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    return str(value)


def jsonable_rows(result: QueryResult) -> list[list[Any]]:
    """The rows of a result as JSON data, for the HTTP query API and the CLI."""
    return [[jsonable(v) for v in row] for row in result.rows]


# ---- builders -------------------------------------------------------------------------

# The touchpoint type that links an anonymous id to a customer (EVENTS.md, Identity).
IDENTIFY_TYPE = "identify"


def _deduplicated(table: str) -> str:
    # FINAL merges not-yet-merged copies of an event at read time, so a count is right
    # straight after an insert.
    return f"{table} FINAL"


def _time_range(since: datetime | None, until: datetime | None, params: Params) -> list[str]:
    clauses: list[str] = []
    if since is not None:
        params["since"] = since.isoformat() if since.tzinfo else f"{since.isoformat()}+00:00"
        clauses.append("occurred_at >= parseDateTime64BestEffort({since:String}, 3, 'UTC')")
    if until is not None:
        params["until"] = until.isoformat() if until.tzinfo else f"{until.isoformat()}+00:00"
        clauses.append("occurred_at < parseDateTime64BestEffort({until:String}, 3, 'UTC')")
    return clauses


def _where(clauses: Sequence[str]) -> str:
    return f"WHERE {' AND '.join(clauses)}" if clauses else ""


def _identities(params: Params) -> str:
    """CTE `identities`: anonymous_id -> linked_customer_id, the customer of its first identify.

    First link wins: the earliest occurred_at, ties broken by the smaller event_id, so a
    later claim of the same anonymous id by another customer is ignored. Read from the
    whole store, not the query's time range: an identify before the range still links.
    """
    params["identify_type"] = IDENTIFY_TYPE
    return f"""identities AS (
    SELECT anonymous_id, argMin(customer_id, (occurred_at, event_id)) AS linked_customer_id
    FROM {_deduplicated(TOUCHPOINTS)}
    WHERE type = {{identify_type:String}} AND anonymous_id != '' AND customer_id != ''
    GROUP BY anonymous_id
)"""


# Who an event belongs to: its own customer_id, else the customer its anonymous id was
# linked to (for events before and after the identify alike), else the anonymous id, else
# the stored key. ifNull: a server profile with join_use_nulls gives NULL for no match.
_PERSON = """multiIf(
        e.customer_id != '', e.customer_id,
        ifNull(i.linked_customer_id, '') != '', assumeNotNull(i.linked_customer_id),
        e.anonymous_id != '', e.anonymous_id,
        e.customer_key
    )"""


def _people(columns: Sequence[str], clauses: Sequence[str]) -> str:
    """Subquery: `columns` of the deduplicated touchpoints matching `clauses`, plus `person`.

    Needs the `identities` CTE. `columns` are names from the table's DDL, never input.
    """
    inner = ", ".join(dict.fromkeys([*columns, "customer_id", "anonymous_id", "customer_key"]))
    outer = "".join(f"e.{name} AS {name}, " for name in columns)
    # The filter sits in the inner read so that FINAL and the range prune before the join;
    # ANY: identities holds one row per anonymous id, so no event is ever counted twice.
    return f"""(
    SELECT {outer}{_PERSON} AS person
    FROM (SELECT {inner} FROM {_deduplicated(TOUCHPOINTS)} {_where(clauses)}) AS e
    LEFT ANY JOIN identities AS i ON e.anonymous_id = i.anonymous_id
)"""


def funnel_sql(
    steps: Sequence[str],
    window_seconds: int,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
) -> tuple[str, Params]:
    """People reaching each step of an ordered funnel over touchpoint types.

    Strategy: one pass per person with windowFunnel in 'strict_increase' mode. A person
    reaches step k when events of types steps[0..k-1] occur in that order with strictly
    increasing occurred_at, other events in between allowed, and the k-th no more than
    `window_seconds` after the first (inclusive). Ties in time do not count as an order.
    Timestamps go in as UInt64 milliseconds (windowFunnel takes no DateTime64), so the
    window is `window_seconds * 1000`. Only events of the step types are read.

    A person is stitched at query time (until a streaming identity projection exists):
    an anonymous id's events, before and after its first `identify`, belong to the
    customer that identify names; see `_identities` and `_PERSON`. Rows: step
    (1-based), step_type, customers, one per step.
    """
    if not steps:
        raise ValueError("a funnel needs at least one step")
    if window_seconds <= 0:
        raise ValueError("the funnel window must be positive")
    params: Params = {"steps": list(steps), "window_ms": int(window_seconds) * 1000}
    conditions = []
    for index, step in enumerate(steps):
        params[f"step_{index}"] = step
        conditions.append(f"type = {{step_{index}:String}}")
    clauses = ["type IN {steps:Array(String)}", *_time_range(since, until, params)]
    # An aggregate without GROUP BY yields one row even for no people, so every step
    # gets a row (0 if nobody reached it).
    reached = ", ".join(f"countIf(level >= {k})" for k in range(1, len(steps) + 1))
    sql = f"""
WITH
{_identities(params)},
per_person AS (
    SELECT
        person,
        windowFunnel({{window_ms:UInt64}}, 'strict_increase')(
            toUInt64(toUnixTimestamp64Milli(occurred_at)),
            {", ".join(conditions)}
        ) AS level
    FROM {_people(["type", "occurred_at"], clauses)}
    GROUP BY person
)
SELECT step, {{steps:Array(String)}}[step] AS step_type, reached[step] AS customers
FROM (SELECT [{reached}] AS reached FROM per_person)
ARRAY JOIN arrayEnumerate(reached) AS step
ORDER BY step
"""
    return sql, params


def touchpoint_counts_sql(
    *, since: datetime | None = None, until: datetime | None = None
) -> tuple[str, Params]:
    """Touchpoints and distinct customers per type, most frequent first.

    Customers are people stitched as in `funnel_sql`: an anonymous id that identified
    counts as its customer, so one person is never two customers of a type.
    """
    params: Params = {}
    people = _people(["type"], _time_range(since, until, params))
    sql = f"""
WITH
{_identities(params)}
SELECT type, count() AS touchpoints, uniqExact(person) AS customers
FROM {people}
GROUP BY type
ORDER BY touchpoints DESC, type
"""
    return sql, params


def touchpoint_total_sql() -> tuple[str, Params]:
    """Stored touchpoints after deduplication: one row, one column."""
    return f"SELECT count() AS touchpoints FROM {_deduplicated(TOUCHPOINTS)}", {}
