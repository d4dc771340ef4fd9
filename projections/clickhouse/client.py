"""The warehouse connection: one clickhouse-connect code path for embedded chDB and a server."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError, OperationalError

# clickhouse-connect logs connection failures at WARNING; without this, a process that
# configured no logging gets them on stderr next to our own one-line error.
logging.getLogger("clickhouse_connect").addHandler(logging.NullHandler())

Engine = Literal["chdb", "server"]

# Each lease holds one engine handle (chDB) or one HTTP client (server). Handles on one
# chDB engine run queries in parallel; a single handle serialises its callers.
DEFAULT_MAX_HANDLES = 4
CONNECT_TIMEOUT_SECONDS = 5
SEND_RECEIVE_TIMEOUT_SECONDS = 300


class WarehouseError(Exception):
    """Base of warehouse failures; the message is one line that names the fix."""


class WarehouseConfigError(WarehouseError):
    """The DSN is malformed or names an unsupported engine."""


class WarehouseUnavailableError(WarehouseError):
    """The server cannot be reached, or the embedded warehouse cannot be opened."""


class WarehouseLockedError(WarehouseUnavailableError):
    """Another process owns the embedded warehouse folder."""


class QueryError(WarehouseError):
    """ClickHouse rejected or failed a statement."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class QueryResult:
    """Column names and types plus the rows, as Python values."""

    columns: tuple[str, ...]
    types: tuple[str, ...]
    rows: list[tuple[Any, ...]]

    def __iter__(self) -> Iterator[Any]:
        # Unpacks as `columns, rows = result`, the shape the HTTP query API sends.
        return iter((self.columns, self.rows))

    def scalar(self) -> Any:
        """The first column of the first row (None when there is no row)."""
        return self.rows[0][0] if self.rows and self.rows[0] else None

    def dicts(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


@dataclass(frozen=True, slots=True)
class _Target:
    engine: Engine
    dsn: str
    location: str  # what messages show: the folder, or host:port/db without credentials


def _connection_reason(exc: Exception) -> str:
    """The socket-level cause of a failed HTTP call, without the driver's URL and query id."""
    text = str(exc)
    match = re.search(r"\[Errno -?\d+\] ([^\"')]+)", text)
    if match:
        return match.group(1).strip()
    for reason in ("timed out", "Connection refused", "Name or service not known"):
        if reason.lower() in text.lower():
            return reason
    return _one_line(text)[:160]


def _one_line(text: str) -> str:
    # ClickHouse messages may carry a stack trace or a version trailer after the first line.
    first = " ".join(part.strip() for part in text.strip().splitlines()[:1])
    return first or text.strip()


def _redacted(dsn: str) -> str:
    # error messages end up in terminals and logs: never show a password
    return re.sub(r"//([^:/@]*):[^@/]*@", r"//\1:***@", dsn)


def _parse(dsn: str) -> _Target:
    if dsn[:7].lower() == "chdb://":
        # The rest is the folder verbatim, as Settings writes it: not URL-decoded, and a
        # '#' or '?' in it is part of the name.
        rest = dsn[7:]
        if rest in ("memory", ":memory:"):
            return _Target("chdb", "chdb://memory", ":memory:")
        if not rest.startswith("/"):
            raise WarehouseConfigError(
                f"warehouse DSN {dsn!r} must name an absolute folder: chdb:///abs/path"
            )
        if "?" in rest:  # chDB reads what follows a '?' as engine options
            raise WarehouseConfigError(f"chDB cannot use a folder with '?' in its path: {rest}")
        # chDB compares folders literally: one spelling per folder (no symlink, no '..')
        folder = os.path.realpath(rest)
        return _Target("chdb", f"chdb://{folder}", folder)
    parsed = urlparse(dsn)
    scheme = parsed.scheme.lower()
    if scheme in ("http", "https"):
        try:
            port = parsed.port or (8443 if scheme == "https" else 8123)
        except ValueError:
            port = 0
        if not parsed.hostname or not port:
            raise WarehouseConfigError(
                f"warehouse DSN {_redacted(dsn)!r} needs a host and a valid port: "
                "http(s)://user:pass@host:8123/db"
            )
        database = parsed.path.strip("/") or "default"
        return _Target("server", dsn, f"{scheme}://{parsed.hostname}:{port}/{database}")
    raise WarehouseConfigError(
        f"unsupported warehouse DSN {_redacted(dsn)!r}: "
        "use chdb:///abs/path or http(s)://user:pass@host:8123/db"
    )


# chDB hosts one engine (one folder) per process; these track which folder, so a second
# Warehouse on the same folder shares the engine and a different folder fails clearly.
_engine_lock = threading.Lock()
_engine_folder: str | None = None
_engine_users = 0
# The working directories the engine was opened in: its file-backed default database
# resolves relative names against the one it started in (see readonly.py).
_engine_dirs: set[str] = set()


def _lock_holder(folder: str) -> str | None:
    """The pid text of another process holding the chDB folder, or None if it is free.

    The engine takes an exclusive flock on `<folder>/status` (and writes its pid there) for
    as long as it runs; the kernel drops the lock when that process dies, so a stale file
    left by a crash reads as free.
    """
    status = Path(folder) / "status"
    try:
        fd = os.open(status, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            text = status.read_text(errors="replace")
            for line in text.splitlines():
                if line.startswith("PID:"):
                    return line.partition(":")[2].strip() or "?"
            return "?"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _locked_error(folder: str, pid: str) -> WarehouseLockedError:
    return WarehouseLockedError(
        f"the warehouse at {folder} is in use by another process (pid {pid}; the worker?): "
        "query through that process (journey sql does so when the worker runs) or stop it first"
    )


def _open_client(target: _Target) -> Client:
    """One clickhouse-connect client: its chDB backend for a folder, HTTP for a server."""
    try:
        if target.engine == "chdb":
            # The folder goes in as `path`, not in a DSN, so that no character of it is
            # read as URL syntax (a '#' or '?').
            path = None if target.location == ":memory:" else target.location
            return clickhouse_connect.get_client(interface="chdb", path=path, tz_mode="aware")
        # No session id: a ClickHouse session admits one query at a time, and the
        # worker queries from several threads.
        return clickhouse_connect.get_client(
            dsn=target.dsn,
            tz_mode="aware",
            autogenerate_session_id=False,
            connect_timeout=CONNECT_TIMEOUT_SECONDS,
            send_receive_timeout=SEND_RECEIVE_TIMEOUT_SECONDS,
        )
    except OperationalError as exc:
        raise WarehouseUnavailableError(
            f"cannot reach ClickHouse at {target.location} ({_connection_reason(exc)}): "
            "start the server or fix JOURNEY_CLICKHOUSE_DSN"
        ) from exc
    except ClickHouseError as exc:
        if target.engine == "chdb":
            pid = _lock_holder(target.location)
            if pid is not None:
                raise _locked_error(target.location, pid) from exc
            raise WarehouseUnavailableError(
                f"cannot open the warehouse at {target.location} ({_one_line(str(exc))}): "
                "check the folder's permissions and free disk space"
            ) from exc
        raise WarehouseUnavailableError(
            f"ClickHouse at {target.location} refused the connection ({_one_line(str(exc))}): "
            "check the user, password and database in JOURNEY_CLICKHOUSE_DSN"
        ) from exc


def _claim_engine(target: _Target) -> None:
    global _engine_folder, _engine_users
    with _engine_lock:
        if _engine_users and _engine_folder != target.location:
            raise WarehouseUnavailableError(
                f"this process already has the warehouse at {_engine_folder} open; chDB allows "
                f"one warehouse per process, so close it before opening {target.location}"
            )
        if not _engine_users and target.location != ":memory:":
            # Probe before the engine tries: its own failure is a vague BAD_ARGUMENTS
            # plus a line on stderr.
            pid = _lock_holder(target.location)
            if pid is not None:
                raise _locked_error(target.location, pid)
        _engine_folder = target.location
        _engine_users += 1
        _engine_dirs.add(os.getcwd())


def _release_engine() -> None:
    global _engine_folder, _engine_users
    with _engine_lock:
        _engine_users -= 1
        if _engine_users == 0:
            _engine_folder = None


def engine_dirs() -> frozenset[str]:
    """Every working directory this process opened an embedded warehouse in."""
    with _engine_lock:
        return frozenset(_engine_dirs)


class _Handles:
    """A small pool: a caller leases a client for one call, so calls from threads never
    share a chDB handle (which would serialise them) or an HTTP session."""

    def __init__(self, target: _Target, size: int) -> None:
        self._target = target
        self._size = size
        self._idle: list[Client] = []
        self._created = 0
        self._closed = False
        self._cond = threading.Condition()
        # Open the first handle now so that a bad DSN or a locked folder fails at connect().
        self._idle.append(_open_client(target))
        self._created = 1

    @contextlib.contextmanager
    def lease(self) -> Iterator[Client]:
        client = self._acquire()
        try:
            yield client
        finally:
            self._give_back(client)

    def _acquire(self) -> Client:
        with self._cond:
            while True:
                if self._closed:
                    raise WarehouseError(f"the warehouse at {self._target.location} is closed")
                if self._idle:
                    return self._idle.pop()
                if self._created < self._size:
                    self._created += 1
                    break
                self._cond.wait()
        try:
            return _open_client(self._target)
        except BaseException:
            with self._cond:
                self._created -= 1
                self._cond.notify()
            raise

    def _give_back(self, client: Client) -> None:
        with self._cond:
            if not self._closed:
                self._idle.append(client)
                self._cond.notify()
                return
            self._created -= 1
        client.close()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._created -= len(idle)
            self._cond.notify_all()
        for client in idle:
            client.close()


class Warehouse:
    """The ClickHouse warehouse behind a DSN: queries, commands, columnar and raw inserts.

    Thread-safe: every call leases its own handle from a small pool. Build it with
    `connect()`; close it (or use it as a context manager) to release a chDB folder.
    """

    def __init__(self, target: _Target, max_handles: int) -> None:
        self.engine: Engine = target.engine
        self.location = target.location
        self._claimed = False
        if target.engine == "chdb":
            _claim_engine(target)
            self._claimed = True
        try:
            self._handles = _Handles(target, max(1, max_handles))
            with self._handles.lease() as client:
                # read once at connect: the client fetched them from system.settings
                self._setting_names = frozenset(client.server_settings)
        except BaseException:
            self._release()
            raise

    def __enter__(self) -> Warehouse:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Warehouse({self.engine}: {self.location})"

    def query(
        self,
        sql: str,
        parameters: Mapping[str, Any] | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> QueryResult:
        """Run a statement that returns rows; values bind server-side as {name:Type}."""
        with self._handles.lease() as client, self._errors():
            result = client.query(
                sql, parameters=dict(parameters or {}), settings=dict(settings or {})
            )
            return QueryResult(
                columns=tuple(result.column_names),
                types=tuple(t.name for t in result.column_types),
                rows=[tuple(row) for row in result.result_rows],
            )

    def command(
        self,
        sql: str,
        parameters: Mapping[str, Any] | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        """Run DDL or another statement whose result is not needed."""
        with self._handles.lease() as client, self._errors():
            client.command(sql, parameters=dict(parameters or {}), settings=dict(settings or {}))

    def insert(
        self,
        table: str,
        columns: Sequence[Sequence[Any]],
        column_names: Sequence[str],
        *,
        column_types: Sequence[str] | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> int:
        """Insert one block given column by column; returns the number of rows sent.

        `column_types` (ClickHouse type names) spares the describe round trip.
        """
        if len(columns) != len(column_names):
            raise ValueError(f"{len(columns)} columns for {len(column_names)} names")
        rows = len(columns[0]) if columns else 0
        if rows == 0:
            return 0
        with self._handles.lease() as client, self._errors():
            client.insert(
                table,
                columns,
                column_names=list(column_names),
                column_type_names=list(column_types) if column_types is not None else None,
                column_oriented=True,
                settings=dict(settings or {}),
            )
        return rows

    def insert_raw(
        self,
        table: str,
        data: bytes,
        fmt: str = "JSONEachRow",
        *,
        column_names: Sequence[str] | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        """Insert rows already encoded in a ClickHouse input format; the engine parses them.

        `column_names` limits the insert to those columns, so that a field of the same
        name as another column (one with a DEFAULT or MATERIALIZED expression) never
        overrides it; the format's settings decide what happens to the other fields.
        """
        if not data:
            return
        with self._handles.lease() as client, self._errors():
            # chDB writes the bytes to a temporary file and inserts FROM INFILE; a server
            # gets them as the body of one HTTP request: the statement is the same.
            client.raw_insert(
                table,
                list(column_names) if column_names is not None else None,
                data,
                settings=dict(settings or {}),
                fmt=fmt,
            )

    def knows_setting(self, name: str) -> bool:
        """Whether the engine has this setting; an older server rejects newer names."""
        return name in self._setting_names

    def ping(self) -> bool:
        with self._handles.lease() as client:
            return bool(client.ping())

    def close(self) -> None:
        """Close every handle; idempotent."""
        if getattr(self, "_handles", None) is not None:
            self._handles.close()
        self._release()

    def _release(self) -> None:
        if self._claimed:
            self._claimed = False
            _release_engine()

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except OperationalError as exc:
            raise WarehouseUnavailableError(
                f"lost the connection to ClickHouse at {self.location} "
                f"({_connection_reason(exc)}): check that the server runs"
            ) from exc
        except ClickHouseError as exc:
            raise QueryError(_one_line(str(exc)), getattr(exc, "code", None)) from exc


def connect(dsn: str, *, max_handles: int = DEFAULT_MAX_HANDLES) -> Warehouse:
    """Open the warehouse a DSN names.

    `chdb:///abs/path` opens the embedded chDB engine on that folder (created if missing;
    `chdb://memory` for a throwaway one); `http(s)://user:pass@host:port/db` connects to a
    ClickHouse server. Both go through clickhouse-connect's one client API.

    Raises WarehouseConfigError, WarehouseUnavailableError or WarehouseLockedError with a
    one-line message.
    """
    return Warehouse(_parse(dsn), max_handles)
