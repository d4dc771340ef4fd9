"""The one query runner: the only place an analyst query reaches the warehouse.

The CLI, the worker's HTTP API, the demo, replay and the benchmarks all run their
statements here, through the read-only gate, and get the same Answer back: rows as JSON
data, wherever the warehouse is (opened in this process, owned by a running worker, or
a ClickHouse server).
"""

from __future__ import annotations

import base64
import http.client
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time
from decimal import Decimal
from enum import Enum
from http import HTTPStatus
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit
from uuid import UUID

from projections.analysis.funnel import FunnelGroup, FunnelSpec, shape_funnel
from projections.clickhouse.builders import build
from projections.clickhouse.client import (
    QueryError,
    QueryResult,
    Warehouse,
    WarehouseConfigError,
    WarehouseError,
    WarehouseUnavailableError,
    connect,
)
from projections.clickhouse.readonly import QueryRejectedError, check_readonly, run_readonly
from projections.clickhouse.sql import Statement
from projections.errors import ConfigurationError, JourneyError, ServiceUnavailableError

# Connecting to a worker on this machine either succeeds or is refused at once; the
# timeout only matters for a worker_host that does not answer.
WORKER_CONNECT_TIMEOUT = 1.0
WORKER_QUERY_TIMEOUT = 300.0
UNAUTHORIZED = HTTPStatus.UNAUTHORIZED


class QueryFailedError(JourneyError):
    """The warehouse refused or failed the statement (bad SQL, not read-only, ...)."""


class WarehouseSettings(Protocol):
    """Where the warehouse is: what the runner reads of the engine's Settings."""

    @property
    def warehouse_dsn(self) -> str: ...

    @property
    def worker_url(self) -> str: ...

    @property
    def api_token_list(self) -> tuple[str, ...]: ...


def worker_headers(tokens: Sequence[str]) -> dict[str, str]:
    """What a client of the worker's HTTP API sends: the first of JOURNEY_API_TOKENS."""
    return {"Authorization": f"Bearer {tokens[0]}"} if tokens else {}


def refused_token(worker_url: str, tokens: Sequence[str]) -> ConfigurationError:
    """The one-line error of a worker that answered 401 to the token sent (or to none)."""
    return ConfigurationError(
        f"the worker at {worker_url} wants a bearer token: set JOURNEY_API_TOKENS "
        "to one of the worker's tokens" if not tokens else
        f"the worker at {worker_url} refused the token: set JOURNEY_API_TOKENS "
        "(the first one is sent) to one of the worker's tokens")


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
    """The rows of a result as JSON data."""
    return [[jsonable(v) for v in row] for row in result.rows]


@dataclass(frozen=True, slots=True)
class Answer:
    """Column names, rows as JSON data, and the column types when the engine gave them.
    Unpacks (and indexes) as (columns, rows)."""

    columns: list[str]
    rows: list[list[Any]]
    types: list[str] = field(default_factory=list)

    def __iter__(self) -> Iterator[Any]:
        return iter((self.columns, self.rows))

    def __getitem__(self, index: int) -> Any:
        return (self.columns, self.rows)[index]

    def records(self) -> list[dict[str, Any]]:
        """The rows as dicts by column name."""
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


def _json_value(value: Any) -> Any:
    # Bound values the worker's JSON body cannot carry as they are: times as ISO text.
    if isinstance(value, datetime | date):
        return value.isoformat()
    raise TypeError(f"cannot send a {type(value).__name__} as a query parameter")


def _ask_worker(worker_url: str, tokens: Sequence[str], sql: str,
                params: Mapping[str, Any]) -> Answer | None:
    """The answer of the worker's POST /query, or None when no worker listens there."""
    url = urlsplit(worker_url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    conn = http.client.HTTPConnection(host, port, timeout=WORKER_CONNECT_TIMEOUT)
    try:
        try:
            conn.connect()
        except OSError:
            return None  # not running (refused) or not reachable: open the warehouse directly
        if conn.sock is not None:
            conn.sock.settimeout(WORKER_QUERY_TIMEOUT)
        body = json.dumps({"sql": sql, "parameters": dict(params)}, default=_json_value).encode()
        try:
            conn.request("POST", "/query", body=body, headers={
                "Content-Type": "application/json", **worker_headers(tokens)})
            response = conn.getresponse()
            payload = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise ServiceUnavailableError(
                f"the worker at {worker_url} stopped answering the query ({exc}): "
                "check its log, or stop it to query the warehouse directly"
            ) from exc
    finally:
        conn.close()
    try:
        answer = json.loads(payload)
    except ValueError:
        answer = None
    if response.status == UNAUTHORIZED:
        raise refused_token(worker_url, tokens)
    if response.status == 200 and isinstance(answer, dict) and "columns" in answer:
        return Answer(list(answer["columns"]), [list(row) for row in answer.get("rows", [])],
                      list(answer.get("types", [])))
    if isinstance(answer, dict) and answer.get("error"):
        if response.status >= 500:  # e.g. 503 while the worker still opens the warehouse
            raise ServiceUnavailableError(f"the worker at {worker_url}: {answer['error']}")
        raise QueryFailedError(str(answer["error"]))
    raise ServiceUnavailableError(
        f"the worker at {worker_url} answered HTTP {response.status} to POST /query: "
        "is it a journey worker of the same version?"
    )


def _on(warehouse: Warehouse, sql: str, params: Mapping[str, Any]) -> Answer:
    try:
        result = run_readonly(warehouse, sql, params)
    except (QueryRejectedError, QueryError) as exc:
        raise QueryFailedError(str(exc)) from exc
    except WarehouseConfigError as exc:
        raise ConfigurationError(str(exc)) from exc
    except WarehouseUnavailableError as exc:
        raise ServiceUnavailableError(str(exc)) from exc
    except WarehouseError as exc:
        raise QueryFailedError(str(exc)) from exc
    return Answer(list(result.columns), jsonable_rows(result), list(result.types))


def _query_directly(dsn: str, sql: str, params: Mapping[str, Any]) -> Answer:
    if dsn.startswith("chdb:///"):
        folder = Path(dsn.removeprefix("chdb://"))
        if not folder.is_dir():
            raise ConfigurationError(
                f"no warehouse at {folder} yet: start the worker once to create it, "
                "or point JOURNEY_CLICKHOUSE_DSN at an existing one"
            )
    try:
        with connect(dsn) as warehouse:
            return _on(warehouse, sql, params)
    except WarehouseConfigError as exc:
        raise ConfigurationError(str(exc)) from exc
    except WarehouseUnavailableError as exc:
        raise ServiceUnavailableError(str(exc)) from exc
    except WarehouseError as exc:
        raise QueryFailedError(str(exc)) from exc


class Runner:
    """Runs read-only statements and answers questions (specs) on one warehouse.

    `Runner(warehouse=...)` runs on a warehouse this process holds open (the worker's
    HTTP API). `Runner(dsn=..., worker_url=..., tokens=...)` finds the warehouse: for
    embedded chDB (`chdb://`) it asks the worker's query API first (with the first token),
    since a running worker holds the warehouse, and opens the warehouse itself when none
    listens; a server DSN is queried directly. Failures are JourneyError subclasses with
    one-line messages.
    """

    def __init__(self, *, warehouse: Warehouse | None = None, dsn: str | None = None,
                 worker_url: str | None = None, tokens: Sequence[str] = ()) -> None:
        if (warehouse is None) == (dsn is None):
            raise ValueError("a Runner needs an open warehouse or a DSN, not both")
        self._warehouse = warehouse
        self._dsn = dsn
        self._worker_url = worker_url
        self._tokens = tuple(tokens)

    @classmethod
    def for_settings(cls, settings: WarehouseSettings) -> Runner:
        """The runner of the engine's warehouse as the settings name it."""
        return cls(dsn=settings.warehouse_dsn, worker_url=settings.worker_url,
                   tokens=settings.api_token_list)

    def run(self, sql: str | Statement, params: Mapping[str, Any] | None = None) -> Answer:
        """One read-only statement (or a builder's Statement); values come back as JSON."""
        if isinstance(sql, Statement):
            text, bound = sql.sql, {**sql.params, **(params or {})}
        else:
            text, bound = sql, dict(params or {})
        if self._warehouse is not None:
            return _on(self._warehouse, text, bound)
        try:
            check_readonly(text)  # refuse early, before reaching out to a worker or a warehouse
        except QueryRejectedError as exc:
            raise QueryFailedError(str(exc)) from exc
        assert self._dsn is not None
        if self._dsn.startswith("chdb://") and self._worker_url is not None:
            answer = _ask_worker(self._worker_url, self._tokens, text, bound)
            if answer is not None:
                return answer
        return _query_directly(self._dsn, text, bound)

    def ask(self, spec: object) -> Answer:
        """The rows that answer a spec of projections/analysis/ (see builders.build)."""
        return self.run(build(spec))

    def funnel(self, spec: FunnelSpec) -> list[FunnelGroup]:
        """A funnel's groups: everybody first, then each breakdown value."""
        return shape_funnel(spec, self.ask(spec).rows)


def run_query(
    settings: WarehouseSettings, sql: str | Statement, params: Mapping[str, Any] | None = None
) -> Answer:
    """Run one read-only statement on the warehouse the settings name (Runner.for_settings)."""
    return Runner.for_settings(settings).run(sql, params)

