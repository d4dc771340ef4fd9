"""The ClickHouse adapter against the real engine: embedded chDB in a temporary folder."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, HTTPServer, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlparse

import orjson
import pytest

from journey.cli.sql import QueryFailedError, run_query
from journey.errors import ServiceUnavailableError
from journey.settings import Settings
from journey.workload import generate
from projections.clickhouse.client import (
    QueryError,
    Warehouse,
    WarehouseConfigError,
    WarehouseError,
    WarehouseUnavailableError,
    connect,
)
from projections.clickhouse.queries import (
    funnel_sql,
    jsonable_rows,
    touchpoint_counts_sql,
)
from projections.clickhouse.readonly import QueryRejectedError, run_readonly
from projections.clickhouse.tables import (
    MIGRATIONS,
    SCHEMA_MIGRATIONS,
    TOUCHPOINT_INSERT_COLUMNS,
    TOUCHPOINTS,
    applied_versions,
    migrate,
)
from projections.clickhouse.writer import insert_touchpoints, insert_touchpoints_json
from projections.ingest import Admitted, admit
from tests.ports import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

T0 = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)


def touchpoint(customer: str, type_: str, at: datetime, **extra: Any) -> dict[str, Any]:
    return {
        "event_id": extra.pop("event_id", str(uuid.uuid4())),
        "schema_version": 1,
        "type": type_,
        "occurred_at": at.isoformat().replace("+00:00", "Z"),
        "received_at": (at + timedelta(seconds=1)).isoformat(),
        "channel": extra.pop("channel", "web"),
        "customer_id": customer,
        "customer_key": customer,
        "properties": extra.pop("properties", {}),
        **extra,
    }


@pytest.fixture(scope="module")
def warehouse_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("warehouse")


@pytest.fixture(scope="module")
def opened(warehouse_dir: Path) -> Iterator[tuple[Warehouse, list[int]]]:
    # chDB hosts one folder per process, so the module shares one warehouse.
    warehouse = connect(f"chdb://{warehouse_dir}")
    try:
        applied = [m.version for m in migrate(warehouse)]
        yield warehouse, applied
    finally:
        warehouse.close()


@pytest.fixture
def warehouse(opened: tuple[Warehouse, list[int]]) -> Warehouse:
    wh = opened[0]
    wh.command(f"TRUNCATE TABLE {TOUCHPOINTS}")
    return wh


def final_count(warehouse: Warehouse) -> int:
    return int(warehouse.query(f"SELECT count() FROM {TOUCHPOINTS} FINAL").scalar())


# ---- migrations ------------------------------------------------------------------------


def test_migrations_apply_once(opened: tuple[Warehouse, list[int]]) -> None:
    warehouse, first = opened
    assert first == [m.version for m in MIGRATIONS]
    assert migrate(warehouse) == []
    assert migrate(warehouse) == []
    assert applied_versions(warehouse) == {m.version for m in MIGRATIONS}
    rows = warehouse.query(f"SELECT version, name FROM {SCHEMA_MIGRATIONS} ORDER BY version")
    assert rows.rows == [(m.version, m.name) for m in MIGRATIONS]


def test_newer_warehouse_is_refused(warehouse: Warehouse) -> None:
    future = MIGRATIONS[-1].version + 1
    warehouse.insert(
        SCHEMA_MIGRATIONS,
        [[future], ["from the future"], [datetime.now(UTC)]],
        ["version", "name", "applied_at"],
    )
    try:
        with pytest.raises(WarehouseError, match="upgrade journey"):
            migrate(warehouse)
    finally:
        warehouse.command(
            f"ALTER TABLE {SCHEMA_MIGRATIONS} DELETE WHERE version = {{v:UInt32}}",
            {"v": future},
            settings={"mutations_sync": 1},
        )
    assert migrate(warehouse) == []


def test_writer_columns_match_the_table(warehouse: Warehouse) -> None:
    described = {row[0]: row[1] for row in warehouse.query(f"DESCRIBE TABLE {TOUCHPOINTS}").rows}
    for name, type_ in TOUCHPOINT_INSERT_COLUMNS:
        assert described[name] == type_, name


# ---- writes ----------------------------------------------------------------------------


def test_insert_and_read_back(warehouse: Warehouse) -> None:
    at = T0 + timedelta(milliseconds=123)
    batch = [
        touchpoint(
            "c1",
            "purchase",
            at,
            event_id="e-1",
            session_id="s1",
            source="shop",
            properties={"order_id": "o1", "revenue": "19.99", "currency": "EUR", "gift": True},
        ),
        touchpoint("c1", "support_contact", at, case_id="k1", properties={"topic": "billing"}),
        touchpoint("a-77", "page_view", at, customer_key="a-77", customer_id=None),
    ]
    assert insert_touchpoints(warehouse, batch) == 3
    result = warehouse.query(
        f"""SELECT event_id, type, occurred_at, received_at, channel, customer_key, session_id,
                   source, revenue, currency, order_id, topic, case_id, customer_id
            FROM {TOUCHPOINTS} FINAL WHERE event_id = {{id:String}}""",
        {"id": "e-1"},
    )
    (row,) = result.dicts()
    assert row["occurred_at"] == at
    assert row["received_at"] == at + timedelta(seconds=1)
    assert row["revenue"] == Decimal("19.99")
    assert (row["currency"], row["order_id"], row["session_id"], row["source"]) == (
        "EUR",
        "o1",
        "s1",
        "shop",
    )
    topics = warehouse.query(
        f"SELECT topic, case_id FROM {TOUCHPOINTS} FINAL WHERE type = 'support_contact'"
    )
    assert topics.rows == [("billing", "k1")]
    anonymous = warehouse.query(
        f"SELECT customer_id, customer_key FROM {TOUCHPOINTS} FINAL WHERE type = 'page_view'"
    )
    assert anonymous.rows == [("", "a-77")]


def test_duplicate_event_ids_count_once(warehouse: Warehouse) -> None:
    a, b, c = (touchpoint("c1", "page_view", T0 + timedelta(seconds=i)) for i in range(3))
    insert_touchpoints(warehouse, [a, b])
    insert_touchpoints(warehouse, [a, b])  # a retried batch
    insert_touchpoints(warehouse, [b, c])  # a re-batched replay
    assert final_count(warehouse) == 3
    counts = run_readonly(warehouse, *touchpoint_counts_sql())
    assert counts.rows == [("page_view", 3, 1)]


def test_dedup_token_makes_a_retry_a_no_op(warehouse: Warehouse) -> None:
    first = [touchpoint("c1", "page_view", T0)]
    insert_touchpoints(warehouse, first, dedup_token="touchpoints/0/10-19")
    # same token, different content: taken for the same insert and skipped
    insert_touchpoints(
        warehouse, [touchpoint("c2", "page_view", T0)], dedup_token="touchpoints/0/10-19"
    )
    assert int(warehouse.query(f"SELECT count() FROM {TOUCHPOINTS}").scalar()) == 1


def test_properties_are_queryable(warehouse: Warehouse) -> None:
    insert_touchpoints(
        warehouse,
        [
            touchpoint(
                "c1",
                "purchase",
                T0,
                properties={
                    "order_id": "o1",
                    "revenue": 10.5,
                    "currency": "EUR",
                    "items": [{"sku": "a", "qty": 2}, {"sku": "b", "qty": 1}],
                    "x_custom": {"nested": "kept"},
                },
            ),
            touchpoint(
                "c2",
                "purchase",
                T0,
                properties={"order_id": "o2", "revenue": "4.25", "currency": "EUR"},
            ),
            touchpoint("c3", "site_visit", T0, properties={"url": "/", "utm_source": "news"}),
        ],
    )
    result = run_readonly(
        warehouse,
        f"""SELECT sum(JSONExtractFloat(properties, 'revenue')) AS float_revenue,
                   sum(revenue) AS decimal_revenue,
                   sumIf(JSONLength(properties, 'items'), type = 'purchase') AS item_lines,
                   anyIf(JSONExtractString(properties, 'x_custom', 'nested'), customer_key = 'c1')
                       AS nested,
                   anyIf(JSONExtractString(properties, 'utm_source'), type = 'site_visit') AS utm
            FROM {TOUCHPOINTS} FINAL""",
    )
    assert result.dicts() == [
        {
            "float_revenue": 14.75,
            "decimal_revenue": Decimal("14.75"),
            "item_lines": 2,
            "nested": "kept",
            "utm": "news",
        }
    ]


def test_queries_and_inserts_from_threads(warehouse: Warehouse) -> None:
    errors: list[BaseException] = []

    def write(worker: int) -> None:
        try:
            for round_ in range(5):
                batch = [
                    touchpoint(f"w{worker}-{i}", "page_view", T0 + timedelta(minutes=round_))
                    for i in range(200)
                ]
                insert_touchpoints(warehouse, batch)
        except BaseException as exc:
            errors.append(exc)

    def read() -> None:
        try:
            for _ in range(10):
                run_readonly(warehouse, *touchpoint_counts_sql())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(2)]
    threads += [threading.Thread(target=read) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert final_count(warehouse) == 2 * 5 * 200


# ---- the JSON path: the topic's records parsed by ClickHouse -----------------------------

Oddity = Callable[[dict[str, Any], int], None]


def _as_generated(event: dict[str, Any], n: int) -> None:
    pass


def _unicode_and_escapes(event: dict[str, Any], n: int) -> None:
    event["properties"]["note"] = 'café – 客户 😀 "quoted" back\\slash \n\t\u0001 \u2028'
    event["customer_id" if "customer_id" in event else "anonymous_id"] += "-ü😀"
    event["session_id"] = 's-"ü"\\'


def _big_properties(event: dict[str, Any], n: int) -> None:
    event["properties"]["blob"] = "x" * 30_000
    event["properties"]["deep"] = {"a": [1, {"b": [None, True, False, {"c": "d"}]}], "e": {}}


_OFFSETS = tuple(
    timezone(timedelta(minutes=m)) for m in (5 * 60 + 30, -(3 * 60 + 30), 14 * 60, -12 * 60)
)


def _local_offset(event: dict[str, Any], n: int) -> None:
    at = datetime.fromisoformat(event["occurred_at"])
    event["occurred_at"] = at.astimezone(_OFFSETS[n % len(_OFFSETS)]).isoformat()


def _fraction(event: dict[str, Any], n: int) -> None:
    at = datetime.fromisoformat(event["occurred_at"])
    at = at.replace(microsecond=(0, 999_999, 1_000, 999, 123_456)[n % 5])
    event["occurred_at"] = at.isoformat().replace("+00:00", "Z")


def _hot_properties(event: dict[str, Any], n: int) -> None:
    # the values the MATERIALIZED columns extract, in awkward spellings
    event["properties"].update(
        revenue=(0.30000000000000004, 1e-7, 1.5e13, 12, -0.0)[n % 5],
        amount=(7.125, 3)[n % 2],
        currency="USD",
        campaign="spring sale ü",
        score=(3, 4.5, 1e-300)[n % 3],
        topic="billing",
        product_id="P-1",
        order_id="O-9",
        big=2**63 - 1,
        negative=-(2**63),
    )


def _sparse(event: dict[str, Any], n: int) -> None:
    event.pop("session_id", None)
    event.pop("source", None)


def _odd_keys(event: dict[str, Any], n: int) -> None:
    event["properties"].update({"": "empty key", 'k"q': 1, "x": {}, "l": []})


ODDITIES: tuple[Oddity, ...] = (
    _as_generated,
    _unicode_and_escapes,
    _big_properties,
    _local_offset,
    _fraction,
    _hot_properties,
    _sparse,
    _odd_keys,
)


def realistic_records(now: datetime, customers: int = 40) -> list[bytes]:
    """The validator's records (admit()) for a generated workload, most events made odd."""
    workload = generate(
        customers, 11, start=now - timedelta(days=30), bad_ratio=0.0, duplicate_ratio=0.0
    )
    records = []
    for i, message in enumerate(workload.messages):
        event = orjson.loads(message.value)
        ODDITIES[i % len(ODDITIES)](event, i // len(ODDITIES))
        admitted = admit(orjson.dumps(event), now=now)
        if isinstance(admitted, Admitted):  # a few oddities break a type's own rules
            records.append(admitted.value)
    assert len(records) > 0.9 * len(workload.messages)
    for mark in (
        rb'\.\d{6}\+05:30"', rb'-03:30"', rb'\+14:00"', rb'\.999999Z"', rb':\d\dZ"',
        "😀".encode(), rb'"revenue":15000000000000\.0', rb'"k\\"q":1',
    ):  # fmt: skip
        assert any(re.search(mark, r) for r in records), mark
    assert any(len(r) > 30_000 for r in records)
    assert any(b'"session_id"' not in r for r in records)
    return records


# Every column the table stores, MATERIALIZED ones included; inserted_at is the write time.
STORED_ROWS = f"""SELECT * EXCEPT (inserted_at), revenue, amount, currency, campaign, product_id,
                         order_id, topic, score
                  FROM {TOUCHPOINTS} FINAL ORDER BY event_id"""


def stored(record: dict[str, Any]) -> bytes:
    """A hand-made record's JSON laid out as the validator writes it: the stamps last."""
    rest = {k: v for k, v in record.items() if k not in ("received_at", "customer_key")}
    stamps = {"received_at": record["received_at"], "customer_key": record["customer_key"]}
    return orjson.dumps({**rest, **stamps})


def only_raw_inserts(monkeypatch: pytest.MonkeyPatch, warehouse: Warehouse) -> None:
    """Make sure the JSON path does not fall back to the columnar writer."""

    def refuse(*args: Any, **kwargs: Any) -> int:
        raise AssertionError("the JSON path fell back to the columnar insert")

    monkeypatch.setattr(warehouse, "insert", refuse)


def test_json_records_land_as_the_columnar_writer_puts_them(
    warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = datetime.now(UTC)
    records = realistic_records(now)
    assert insert_touchpoints(warehouse, [orjson.loads(r) for r in records]) == len(records)
    columnar = warehouse.query(STORED_ROWS)
    warehouse.command(f"TRUNCATE TABLE {TOUCHPOINTS}")
    with monkeypatch.context() as patched:
        only_raw_inserts(patched, warehouse)
        assert insert_touchpoints_json(warehouse, records) == len(records)
    parsed = warehouse.query(STORED_ROWS)
    assert parsed.columns == columnar.columns
    assert len(parsed.rows) == len(records)
    assert parsed.rows == columnar.rows
    # the comparison has teeth: the hot columns are filled, the odd values are there
    filled = warehouse.query(
        f"""SELECT countIf(revenue IS NOT NULL), countIf(score IS NOT NULL),
                   countIf(campaign != ''), countIf(session_id = ''),
                   max(length(properties)), min(inserted_at)
            FROM {TOUCHPOINTS}"""
    ).rows[0]
    assert all(filled[:5]), filled
    assert filled[5] >= now - timedelta(minutes=10)
    # properties is the validator's text byte for byte, so JSONExtract* agrees too
    by_id = {orjson.loads(r)["event_id"]: r for r in records}
    for event_id, properties in warehouse.query(
        f"SELECT event_id, properties FROM {TOUCHPOINTS}"
    ).rows:
        assert orjson.dumps(orjson.loads(by_id[event_id])["properties"]) == properties.encode()


def test_json_offsets_and_fractions_become_utc_milliseconds(
    warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = {
        "event_id": "e-offset",
        "schema_version": 1,
        "type": "page_view",
        "occurred_at": "2024-05-01T14:30:00.250999+05:30",
        "received_at": "2024-05-01T09:00:01Z",
        "channel": "web",
        "customer_id": "c1",
        "customer_key": "c1",
        "properties": {},
    }
    only_raw_inserts(monkeypatch, warehouse)
    insert_touchpoints_json(warehouse, [stored(record)])
    row = warehouse.query(f"SELECT occurred_at, received_at FROM {TOUCHPOINTS}").rows[0]
    assert row == (T0 + timedelta(milliseconds=250), T0 + timedelta(seconds=1))


def test_json_records_without_the_stamps_get_the_columnar_fallbacks(
    warehouse: Warehouse,
) -> None:
    # records from before the validator stamped them: decoded and written as columns
    stamped = touchpoint("c1", "page_view", T0, event_id="e-stamped")
    no_key = touchpoint("c2", "page_view", T0, event_id="e-no-key")
    del no_key["customer_key"]
    empty_key = touchpoint("c3", "page_view", T0, event_id="e-empty-key", customer_key="")
    anonymous = touchpoint("x", "page_view", T0, event_id="e-anon", anonymous_id="a4")
    del anonymous["customer_key"], anonymous["customer_id"]
    no_received = touchpoint("c5", "page_view", T0, event_id="e-no-received")
    del no_received["received_at"]
    # a stamp name inside properties only is still no stamp
    nested = touchpoint("c6", "page_view", T0, event_id="e-nested")
    nested["properties"] = {"received_at": "2024-01-01T00:00:00Z", "customer_key": "z"}
    del nested["customer_key"], nested["received_at"]
    before = datetime.now(UTC) - timedelta(seconds=1)
    batch = [stamped, no_key, empty_key, anonymous, no_received, nested]
    assert insert_touchpoints_json(warehouse, [orjson.dumps(r) for r in batch]) == len(batch)
    rows = warehouse.query(
        f"SELECT event_id, customer_key, received_at FROM {TOUCHPOINTS} FINAL ORDER BY event_id"
    ).rows
    keys = {event_id: key for event_id, key, _ in rows}
    assert keys == {
        "e-stamped": "c1",
        "e-no-key": "c2",
        "e-empty-key": "c3",
        "e-anon": "a4",
        "e-no-received": "c5",
        "e-nested": "c6",
    }
    received = {event_id: at for event_id, _, at in rows}
    assert received["e-stamped"] == T0 + timedelta(seconds=1)
    assert received["e-no-received"] >= before


def test_json_extra_top_level_fields_are_never_stored(
    warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Field names of other columns, in another case, or of no column: none is stored.
    extras = {
        "inserted_at": "1999-01-01T00:00:00Z",
        "revenue": 999,
        "Properties": "shadow",
        "EVENT_ID": "shadow",
        "utm": {"source": "x", "n": [1, 2]},
    }
    now = datetime.now(UTC)
    first, second = str(uuid.UUID(int=1)), str(uuid.UUID(int=2))
    event = touchpoint("c1", "page_view", T0, event_id=first)
    event["properties"] = {"url": "https://shop.test/", "revenue": 5.5}
    del event["received_at"], event["customer_key"]
    admitted = admit(orjson.dumps({**event, **extras}), now=now)
    assert isinstance(admitted, Admitted), admitted
    # The validator keeps the extras after its stamps: that batch goes by columns.
    assert admitted.value.endswith(b'"EVENT_ID":"shadow","utm":{"source":"x","n":[1,2]}}')
    insert_touchpoints_json(warehouse, [admitted.value])
    # Written by someone else, extras before the stamps: ClickHouse must skip them.
    other = {**extras, **touchpoint("c2", "page_view", T0, event_id=second)}
    other["properties"] = event["properties"]
    other["received_at"] = other.pop("received_at")
    other["customer_key"] = other.pop("customer_key")
    with monkeypatch.context() as patched:
        only_raw_inserts(patched, warehouse)
        insert_touchpoints_json(warehouse, [orjson.dumps(other)])
    rows = warehouse.query(
        f"""SELECT event_id, customer_key, properties, revenue, inserted_at >= {{t:DateTime64(3)}}
            FROM {TOUCHPOINTS} FINAL ORDER BY event_id""",
        {"t": now - timedelta(minutes=10)},
    ).rows
    properties = orjson.dumps(event["properties"]).decode()
    assert rows == [
        (first, "c1", properties, Decimal("5.5"), True),
        (second, "c2", properties, Decimal("5.5"), True),
    ]


def test_json_duplicates_count_once(warehouse: Warehouse) -> None:
    a, b, c = (touchpoint("c1", "page_view", T0 + timedelta(seconds=i)) for i in range(3))
    insert_touchpoints_json(warehouse, [stored(a), stored(b)])
    insert_touchpoints_json(warehouse, [stored(a), stored(b)])  # a retried batch
    insert_touchpoints(warehouse, [b, c])  # the same events by the columnar path
    assert final_count(warehouse) == 3
    token = "touchpoints/0/10-19"
    d, e = touchpoint("c2", "page_view", T0), touchpoint("c3", "page_view", T0)
    insert_touchpoints_json(warehouse, [stored(d)], dedup_token=token)
    stored_rows = int(warehouse.query(f"SELECT count() FROM {TOUCHPOINTS}").scalar())
    insert_touchpoints_json(warehouse, [stored(e)], dedup_token=token)  # a no-op
    assert int(warehouse.query(f"SELECT count() FROM {TOUCHPOINTS}").scalar()) == stored_rows
    assert final_count(warehouse) == 4


def test_undecodable_json_fails_the_whole_insert(warehouse: Warehouse) -> None:
    good = stored(touchpoint("c1", "page_view", T0))
    # stamped at the end, so ClickHouse gets it and refuses it
    broken = b'{"event_id":"e", oops,"received_at":"x","customer_key":"c1"}'
    with pytest.raises(QueryError, match=r"(?i)parse|incorrect"):
        insert_touchpoints_json(warehouse, [good, broken])
    # not stamped, so Python decodes the batch and refuses it
    with pytest.raises(ValueError, match="unexpected"):
        insert_touchpoints_json(warehouse, [good, good[:-9]])
    assert final_count(warehouse) == 0
    assert insert_touchpoints_json(warehouse, []) == 0
    warehouse.insert_raw(TOUCHPOINTS, b"")  # nothing to send: no statement at all
    assert final_count(warehouse) == 0


# ---- the same through the HTTP interface of a server --------------------------------------

# URL parameters of ClickHouse's HTTP interface that are not settings.
_HTTP_PARAMETERS = frozenset(
    {
        "query", "database", "default_format", "query_id", "session_id", "session_timeout",
        "session_check", "compress", "decompress", "user", "password", "wait_end_of_query",
        "buffer_size", "role",
    }
)  # fmt: skip
_HTTP_INSERT = re.compile(rb"\s*INSERT INTO (.+?)\s+FORMAT\s+(\w+)[ \t]*\n?", re.S | re.I)


def serve_chdb_over_http(folder: str) -> None:
    """A stand-in for a ClickHouse server, run in a child process: chDB behind HTTP.

    No server binary is to be had here; this follows the HTTP interface as far as
    clickhouse-connect's HTTP client uses it: the statement in the `query` parameter or
    at the head of the body, an INSERT's data after its FORMAT clause, settings and
    `param_` values as URL parameters, a failure as a 500 with its code in a header. It
    applies settings to INSERTs (the point here) and ignores them for other statements.
    """
    from chdb import session  # the test's own engine; the product reaches chDB via the client

    open_session: Any = session.Session  # chDB ships no type hints
    engine = open_session(folder)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            url = urlparse(self.path)
            if url.path == "/ping":
                self.reply(200, b"Ok.\n")
                return
            params = dict(parse_qsl(url.query, keep_blank_values=True))
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            text = params["query"].encode() + b"\n" + body if "query" in params else body
            settings = {
                k: v for k, v in params.items() if k not in _HTTP_PARAMETERS and k[:6] != "param_"
            }
            bound = {k[6:]: v for k, v in params.items() if k[:6] == "param_"}
            try:
                insert = _HTTP_INSERT.match(text)
                if insert is None:
                    fmt = params.get("default_format", "TabSeparated")
                    self.reply(200, engine.query(text.decode(), fmt, params=bound).bytes() or b"")
                    return
                target, fmt = (part.decode() for part in insert.groups())
                clause = ", ".join(f"{k} = '{v}'" for k, v in settings.items())
                with tempfile.NamedTemporaryFile(suffix=".data") as data:
                    data.write(text[insert.end() :])
                    data.flush()
                    engine.query(
                        f"INSERT INTO {target} FROM INFILE '{data.name}' SETTINGS {clause} "
                        f"FORMAT {fmt}",
                        "TabSeparated",
                    )
                self.reply(200, b"")
            except Exception as exc:  # the engine's refusal, as a server reports it
                code = re.search(r"Code: (\d+)", str(exc))
                self.reply(500, str(exc).encode(), code.group(1) if code else "1")

        do_GET = do_POST

        def reply(self, status: int, payload: bytes, code: str | None = None) -> None:
            self.send_response(status)
            if code is not None:
                self.send_header("X-ClickHouse-Exception-Code", code)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)  # one request at a time, like the engine
    print(server.server_address[1], flush=True)
    server.serve_forever()


@pytest.fixture(scope="module")
def server_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("server")
    script = (
        "import sys\n"
        "from tests.integration.test_clickhouse import serve_chdb_over_http\n"
        "serve_chdb_over_http(sys.argv[1])\n"
    )
    with (folder / "server.log").open("w") as log:
        child = subprocess.Popen(
            [sys.executable, "-c", script, str(folder / "data")],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
    try:
        assert child.stdout is not None
        port = child.stdout.readline().strip()
        assert port, (folder / "server.log").read_text()
        yield f"http://default:@127.0.0.1:{port}/default"
    finally:
        child.terminate()
        child.wait(30)


def test_json_records_through_a_server(
    server_dsn: str, warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = realistic_records(datetime.now(UTC), customers=15)
    insert_touchpoints(warehouse, [orjson.loads(r) for r in records])
    expected = warehouse.query(STORED_ROWS)
    with connect(server_dsn) as server:
        assert server.engine == "server"
        migrate(server)
        assert server.knows_setting("input_format_column_name_matching_mode")
        only_raw_inserts(monkeypatch, server)
        assert insert_touchpoints_json(server, records) == len(records)
        got = server.query(STORED_ROWS)
        with pytest.raises(QueryError, match=r"(?i)parse|incorrect"):
            insert_touchpoints_json(server, [b'{"oops","received_at":"x","customer_key":"c1"}'])
    assert got.columns == expected.columns
    assert len(got.rows) == len(records)
    assert got.rows == expected.rows


# ---- the funnel ------------------------------------------------------------------------

STEPS = ["site_visit", "add_to_cart", "purchase"]
WINDOW = 3600


def reached_level(events: list[tuple[datetime, str]], steps: list[str], window_s: int) -> int:
    """Deepest funnel step reached, computed independently: a chain of the step types with
    strictly increasing times, the last no more than the window after the first."""
    ordered = sorted(events)
    best = 0
    for start, kind in ordered:
        if kind != steps[0]:
            continue
        level, last = 1, start
        for step in steps[1:]:
            later = [
                t
                for t, k in ordered
                if k == step and last < t <= start + timedelta(seconds=window_s)
            ]
            if not later:
                break
            level, last = level + 1, min(later)
        best = max(best, level)
    return best


def expected_funnel(
    journeys: dict[str, list[tuple[datetime, str]]], steps: list[str], window_s: int
) -> list[tuple[int, str, int]]:
    levels = [reached_level(events, steps, window_s) for events in journeys.values()]
    return [(k, step, sum(1 for level in levels if level >= k)) for k, step in enumerate(steps, 1)]


def hand_built_journeys() -> dict[str, list[tuple[datetime, str]]]:
    m = timedelta(minutes=1)
    ms = timedelta(milliseconds=1)
    return {
        "in_order": [(T0, "site_visit"), (T0 + 5 * m, "add_to_cart"), (T0 + 9 * m, "purchase")],
        "stops_at_cart": [(T0, "site_visit"), (T0 + 5 * m, "add_to_cart")],
        "reverse_order": [(T0, "purchase"), (T0 + m, "add_to_cart"), (T0 + 2 * m, "site_visit")],
        "purchase_too_late": [
            (T0, "site_visit"),
            (T0 + 10 * m, "add_to_cart"),
            (T0 + 120 * m, "purchase"),
        ],
        "second_try_in_window": [
            (T0, "site_visit"),
            (T0 + 180 * m, "site_visit"),
            (T0 + 190 * m, "add_to_cart"),
            (T0 + 200 * m, "purchase"),
        ],
        "same_instant": [(T0, "site_visit"), (T0, "add_to_cart"), (T0 + m, "purchase")],
        "cart_on_the_boundary": [
            (T0, "site_visit"),
            (T0 + WINDOW * 1000 * ms, "add_to_cart"),
            (T0 + (WINDOW * 1000 + 1) * ms, "purchase"),
        ],
        "noise_between": [
            (T0, "site_visit"),
            (T0 + m, "page_view"),
            (T0 + 2 * m, "purchase"),
            (T0 + 3 * m, "add_to_cart"),
            (T0 + 4 * m, "purchase"),
        ],
        "cart_only": [(T0, "add_to_cart")],
        "no_step_at_all": [(T0, "page_view"), (T0 + m, "search")],
    }


def insert_journeys(warehouse: Warehouse, journeys: dict[str, list[tuple[datetime, str]]]) -> None:
    batch = [
        touchpoint(customer, kind, at)
        for customer, events in journeys.items()
        for at, kind in events
    ]
    insert_touchpoints(warehouse, batch)


def test_funnel_on_hand_built_journeys(warehouse: Warehouse) -> None:
    journeys = hand_built_journeys()
    insert_journeys(warehouse, journeys)
    levels = {c: reached_level(e, STEPS, WINDOW) for c, e in journeys.items()}
    assert levels == {
        "in_order": 3,
        "stops_at_cart": 2,
        "reverse_order": 1,
        "purchase_too_late": 2,
        "second_try_in_window": 3,
        "same_instant": 1,
        "cart_on_the_boundary": 2,
        "noise_between": 3,
        "cart_only": 0,
        "no_step_at_all": 0,
    }
    result = run_readonly(warehouse, *funnel_sql(STEPS, WINDOW))
    assert result.columns == ("step", "step_type", "customers")
    assert result.rows == [(1, "site_visit", 8), (2, "add_to_cart", 6), (3, "purchase", 3)]
    assert result.rows == expected_funnel(journeys, STEPS, WINDOW)


def test_funnel_on_random_journeys(warehouse: Warehouse) -> None:
    rng = random.Random(20240501)
    kinds = [*STEPS, "page_view"]
    journeys = {
        f"r{n}": [
            (T0 + timedelta(seconds=rng.randrange(0, 4 * 3600)), rng.choice(kinds))
            for _ in range(rng.randrange(1, 9))
        ]
        for n in range(300)
    }
    insert_journeys(warehouse, journeys)
    for window in (600, 3600, 7200):
        result = run_readonly(warehouse, *funnel_sql(STEPS, window))
        assert result.rows == expected_funnel(journeys, STEPS, window), window


def test_funnel_time_range_and_empty_steps(warehouse: Warehouse) -> None:
    journeys = hand_built_journeys()
    insert_journeys(warehouse, journeys)
    until = T0 + timedelta(minutes=150)  # leaves out the second try and the late purchase
    clipped = {c: [(t, k) for t, k in events if t < until] for c, events in journeys.items()}
    result = run_readonly(warehouse, *funnel_sql(STEPS, WINDOW, since=T0, until=until))
    assert result.rows == expected_funnel(clipped, STEPS, WINDOW)
    nobody = run_readonly(warehouse, *funnel_sql(["x'; DROP TABLE touchpoints; --", "b"], 60))
    assert nobody.rows == [(1, "x'; DROP TABLE touchpoints; --", 0), (2, "b", 0)]
    assert final_count(warehouse) == sum(len(e) for e in journeys.values())


# ---- identity stitching ----------------------------------------------------------------

FULL_FUNNEL = ["ad_impression", "site_visit", "add_to_cart", "purchase"]
DAY = 24 * 3600


def anonymous(anonymous_id: str, type_: str, at: datetime) -> dict[str, Any]:
    # as the validator stores it today: customer_key is the anonymous id
    return touchpoint(anonymous_id, type_, at, customer_id=None, anonymous_id=anonymous_id)


def identify(customer: str, anonymous_id: str, at: datetime, **extra: Any) -> dict[str, Any]:
    return touchpoint(customer, "identify", at, anonymous_id=anonymous_id, **extra)


def stitched_journeys(
    records: list[dict[str, Any]], *, since: datetime | None = None
) -> dict[str, list[tuple[datetime, str]]]:
    """Each person's (time, type) events, computed independently of the SQL: an anonymous
    id belongs to the customer of its earliest identify (ties: the smaller event_id), and
    an identify outside the time range still links."""
    links: dict[str, str] = {}
    claims = sorted(
        (r for r in records if r["type"] == "identify"),
        key=lambda r: (datetime.fromisoformat(r["occurred_at"]), r["event_id"]),
    )
    for claim in claims:
        links.setdefault(claim["anonymous_id"], claim["customer_id"])
    journeys: dict[str, list[tuple[datetime, str]]] = {}
    for r in records:
        at = datetime.fromisoformat(r["occurred_at"])
        if since is not None and at < since:
            continue
        anon = r.get("anonymous_id") or ""
        person = r.get("customer_id") or links.get(anon) or anon or r["customer_key"]
        journeys.setdefault(person, []).append((at, r["type"]))
    return journeys


def keyed_journeys(records: list[dict[str, Any]]) -> dict[str, list[tuple[datetime, str]]]:
    """Events per stored customer_key: what the funnel counted before stitching."""
    journeys: dict[str, list[tuple[datetime, str]]] = {}
    for r in records:
        journeys.setdefault(r["customer_key"], []).append(
            (datetime.fromisoformat(r["occurred_at"]), r["type"])
        )
    return journeys


def stitching_scenarios() -> dict[str, list[dict[str, Any]]]:
    m = timedelta(minutes=1)
    return {
        # browses anonymously, identifies, buys as a customer, comes back (one person)
        "identified_before_purchase": [
            anonymous("a-1", "ad_impression", T0),
            anonymous("a-1", "site_visit", T0 + m),
            anonymous("a-1", "add_to_cart", T0 + 2 * m),
            identify("c-1", "a-1", T0 + 3 * m),
            touchpoint("c-1", "purchase", T0 + 4 * m),
            touchpoint("c-1", "site_visit", T0 + 50 * m),
        ],
        # phone (a-2) and laptop (a-3); the laptop's cart predates its identify, and the
        # phone comes back anonymously after the purchase
        "two_devices_one_customer": [
            anonymous("a-2", "ad_impression", T0),
            anonymous("a-2", "site_visit", T0 + m),
            identify("c-2", "a-2", T0 + 2 * m),
            anonymous("a-3", "add_to_cart", T0 + 5 * m),
            identify("c-2", "a-3", T0 + 20 * m),
            touchpoint("c-2", "purchase", T0 + 30 * m),
            anonymous("a-2", "site_visit", T0 + 40 * m),
        ],
        # c-4 claims a-4 after c-3 did: ignored, so c-4 never saw the ad
        "conflicting_claim_ignored": [
            anonymous("a-4", "ad_impression", T0),
            anonymous("a-4", "site_visit", T0 + m),
            identify("c-3", "a-4", T0 + 2 * m),
            identify("c-4", "a-4", T0 + 3 * m),
            touchpoint("c-4", "add_to_cart", T0 + 4 * m),
            touchpoint("c-4", "purchase", T0 + 5 * m),
            touchpoint("c-3", "add_to_cart", T0 + 10 * m),
        ],
        # two claims at the same instant: the smaller event_id (c-7's) is the first
        "same_instant_claims": [
            anonymous("a-6", "ad_impression", T0),
            identify("c-6", "a-6", T0 + m, event_id=str(uuid.UUID(int=2))),
            identify("c-7", "a-6", T0 + m, event_id=str(uuid.UUID(int=1))),
            touchpoint("c-7", "site_visit", T0 + 2 * m),
            touchpoint("c-6", "add_to_cart", T0 + 3 * m),
        ],
        # a-5 never identifies (another id does): it stays a person of its own
        "never_identified": [
            anonymous("a-5", "ad_impression", T0),
            anonymous("a-5", "site_visit", T0 + m),
            anonymous("a-5", "add_to_cart", T0 + 2 * m),
            identify("c-9", "a-9", T0 + 3 * m),
            anonymous("a-8", "purchase", T0 + 4 * m),
        ],
    }


@pytest.mark.parametrize(
    ("scenario", "expected_people"),
    [
        ("identified_before_purchase", [1, 1, 1, 1]),
        ("two_devices_one_customer", [1, 1, 1, 1]),
        ("conflicting_claim_ignored", [1, 1, 1, 0]),
        ("same_instant_claims", [1, 1, 0, 0]),
        ("never_identified", [1, 1, 1, 0]),
    ],
)
def test_funnel_stitches_each_scenario(
    warehouse: Warehouse, scenario: str, expected_people: list[int]
) -> None:
    records = stitching_scenarios()[scenario]
    insert_touchpoints(warehouse, records)
    result = run_readonly(warehouse, *funnel_sql(FULL_FUNNEL, DAY))
    assert [row[2] for row in result.rows] == expected_people
    assert result.rows == expected_funnel(stitched_journeys(records), FULL_FUNNEL, DAY)


def test_funnel_stitches_all_scenarios_together(warehouse: Warehouse) -> None:
    records = [r for rs in stitching_scenarios().values() for r in rs]
    insert_touchpoints(warehouse, records)
    # a retried batch of the identifies changes nothing (FINAL)
    insert_touchpoints(warehouse, [r for r in records if r["type"] == "identify"])
    journeys = stitched_journeys(records)
    levels = {p: reached_level(e, FULL_FUNNEL, DAY) for p, e in journeys.items()}
    assert {p: n for p, n in levels.items() if n} == {
        "c-1": 4,
        "c-2": 4,
        "c-3": 3,
        "c-7": 2,
        "a-5": 3,
    }
    # by customer_key alone nobody converts: the data exercises the stitching
    assert expected_funnel(keyed_journeys(records), FULL_FUNNEL, DAY)[-1][2] == 0
    result = run_readonly(warehouse, *funnel_sql(FULL_FUNNEL, DAY))
    assert result.rows == [
        (1, "ad_impression", 5),
        (2, "site_visit", 5),
        (3, "add_to_cart", 4),
        (4, "purchase", 2),
    ]
    assert result.rows == expected_funnel(journeys, FULL_FUNNEL, DAY)
    # the links come from the whole store even when the range leaves the identifies out
    since = T0 + timedelta(minutes=3)
    ranged = run_readonly(warehouse, *funnel_sql(FULL_FUNNEL, DAY, since=since))
    assert ranged.rows == expected_funnel(stitched_journeys(records, since=since), FULL_FUNNEL, DAY)


def expected_counts(
    journeys: dict[str, list[tuple[datetime, str]]],
) -> list[tuple[str, int, int]]:
    touchpoints: dict[str, int] = {}
    people: dict[str, set[str]] = {}
    for person, events in journeys.items():
        for _, kind in events:
            touchpoints[kind] = touchpoints.get(kind, 0) + 1
            people.setdefault(kind, set()).add(person)
    rows = [(kind, n, len(people[kind])) for kind, n in touchpoints.items()]
    return sorted(rows, key=lambda row: (-row[1], row[0]))


def test_touchpoint_counts_count_stitched_customers(warehouse: Warehouse) -> None:
    records = [r for rs in stitching_scenarios().values() for r in rs]
    insert_touchpoints(warehouse, records)
    counts = run_readonly(warehouse, *touchpoint_counts_sql())
    assert counts.rows == expected_counts(stitched_journeys(records))
    by_type = {row[0]: row[1:] for row in counts.rows}
    # a-1 and c-1 are one person; a-2's visits and c-2 too; a-4's is c-3's
    assert by_type["site_visit"] == (7, 5)
    assert by_type["identify"] == (8, 7)  # c-2 identified twice
    # since 00:03: a-2's return visit still counts as c-2, whose identify is 00:02
    since = T0 + timedelta(minutes=3)
    ranged = run_readonly(warehouse, *touchpoint_counts_sql(since=since))
    assert ranged.rows == expected_counts(stitched_journeys(records, since=since))
    assert dict((r[0], r[1:]) for r in ranged.rows)["site_visit"] == (2, 2)


# ---- read-only queries -----------------------------------------------------------------


def test_read_only_gate(warehouse: Warehouse) -> None:
    insert_touchpoints(warehouse, [touchpoint("c1", "page_view", T0)])
    for statement in (
        f"DROP TABLE {TOUCHPOINTS}",
        f"SELECT 1; DROP TABLE {TOUCHPOINTS}",
        "SELECT 1 INTO OUTFILE 'leak.csv'",
    ):
        with pytest.raises(QueryRejectedError):
            run_readonly(warehouse, statement)
    hostile = "x'; DROP TABLE touchpoints; --"
    result = run_readonly(
        warehouse,
        f"SELECT count() FROM {TOUCHPOINTS} FINAL WHERE type = {{t:String}};",
        {"t": hostile},
    )
    assert result.scalar() == 0
    assert run_readonly(warehouse, "SELECT 1 AS one SETTINGS max_threads = 1").scalar() == 1
    with pytest.raises(QueryError, match=r"UNKNOWN_IDENTIFIER|Unknown"):
        run_readonly(warehouse, f"SELECT nope FROM {TOUCHPOINTS}")
    # the readonly setting stays with its query: every pooled handle can still write
    for _ in range(6):
        insert_touchpoints(warehouse, [touchpoint("c2", "page_view", T0)])
    assert final_count(warehouse) == 7


# ---- connection errors -----------------------------------------------------------------


@pytest.mark.parametrize("dsn", ["postgres://x", "chdb://relative/path", "http:///nohost", ""])
def test_bad_dsn(dsn: str) -> None:
    with pytest.raises(WarehouseConfigError):
        connect(dsn)


def test_unreachable_server() -> None:
    with pytest.raises(WarehouseUnavailableError, match=r"cannot reach ClickHouse at .*JOURNEY_"):
        connect("http://user:secret@127.0.0.1:9/db")


def test_one_folder_per_process(opened: tuple[Warehouse, list[int]], tmp_path: Path) -> None:
    with pytest.raises(WarehouseUnavailableError, match="one warehouse per process"):
        connect(f"chdb://{tmp_path}")
    # the same folder twice shares the engine
    with connect(f"chdb://{opened[0].location}") as again:
        assert again.query("SELECT 1").scalar() == 1


def test_second_process_is_told_who_holds_the_folder(
    opened: tuple[Warehouse, list[int]],
) -> None:
    folder = opened[0].location
    script = (
        "import sys\n"
        "from projections.clickhouse.client import WarehouseLockedError, connect\n"
        "try:\n"
        f"    connect({('chdb://' + folder)!r})\n"
        "except WarehouseLockedError as exc:\n"
        "    print(exc)\n"
        "    sys.exit(3)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 3, done.stderr
    assert done.stdout.strip().startswith(
        f"the warehouse at {folder} is in use by another process (pid {os.getpid()}; the worker?)"
    )
    assert done.stderr == ""


def test_closed_warehouse_refuses_calls(warehouse_dir: Path) -> None:
    with connect(f"chdb://{warehouse_dir}") as extra:
        pass
    with pytest.raises(WarehouseError, match="closed"):
        extra.query("SELECT 1")


# ---- journey sql's run_query -----------------------------------------------------------


class FakeWorker:
    """Stands in for the worker's POST /query, answering from the module's warehouse."""

    def __init__(self, warehouse: Warehouse, status: int | None = None) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.seen.append(body)
                code, answer = outer.answer(body)
                payload = json.dumps(answer).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.warehouse = warehouse
        self.status = status
        self.seen: list[dict[str, Any]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def answer(self, body: dict[str, Any]) -> tuple[int, Any]:
        if self.status is not None:
            return self.status, "not here"
        try:
            result = run_readonly(self.warehouse, body["sql"], body["parameters"])
        except WarehouseError as exc:
            return 400, {"error": str(exc)}
        return 200, {"columns": list(result.columns), "rows": jsonable_rows(result)}

    def __enter__(self) -> FakeWorker:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def cli_settings(folder: str, port: int) -> Settings:
    return Settings(clickhouse_dsn=f"chdb://{folder}", worker_port=port)


def test_run_query_through_the_worker(warehouse: Warehouse) -> None:
    insert_touchpoints(warehouse, [touchpoint("c1", "purchase", T0, properties={"revenue": 2})])
    with FakeWorker(warehouse) as worker:
        settings = cli_settings(warehouse.location, worker.port)
        columns, rows = run_query(
            settings,
            f"SELECT type, occurred_at, revenue FROM {TOUCHPOINTS} FINAL WHERE type = {{t:String}}",
            {"t": "purchase"},
        )
        assert columns == ["type", "occurred_at", "revenue"]
        assert rows == [["purchase", T0.isoformat(), "2.0000"]]
        assert worker.seen[0]["parameters"] == {"t": "purchase"}
        with pytest.raises(QueryFailedError, match="not DROP"):
            run_query(settings, f"DROP TABLE {TOUCHPOINTS}")
        assert len(worker.seen) == 1  # refused before asking the worker
        with pytest.raises(QueryFailedError, match="nope"):
            run_query(settings, f"SELECT nope FROM {TOUCHPOINTS}")
        assert len(worker.seen) == 2


def test_run_query_reports_a_worker_that_is_not_one(warehouse: Warehouse) -> None:
    with FakeWorker(warehouse, status=404) as worker:
        settings = cli_settings(warehouse.location, worker.port)
        with pytest.raises(ServiceUnavailableError, match="HTTP 404"):
            run_query(settings, "SELECT 1")


def test_run_query_opens_the_warehouse_without_a_worker(warehouse: Warehouse) -> None:
    insert_touchpoints(warehouse, [touchpoint("c1", "page_view", T0)])
    settings = cli_settings(warehouse.location, free_port())
    columns, rows = run_query(settings, f"SELECT count() AS n FROM {TOUCHPOINTS} FINAL")
    assert (columns, rows) == (["n"], [[1]])
    with pytest.raises(QueryFailedError, match="one statement at a time"):
        run_query(settings, "SELECT 1; SELECT 2")
