"""The warehouse registry: every table's name and DDL, applied as versioned migrations.

No other module spells a table name: they import the constants below.

Migrations are append-only. A migration that shipped is never edited; a later change is
a new migration (ALTER ... IF NOT EXISTS and friends). Every statement must be idempotent
(IF NOT EXISTS), because a process can die between running a migration's DDL and
recording it, and because two processes may race on a fresh server; rerunning is then
harmless.

Room is kept for the read models still to come (journeys, transitions, identities,
friction, KPI rollups): each gets a name constant here and a migration of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from projections.clickhouse.client import Warehouse, WarehouseError

SCHEMA_MIGRATIONS = "schema_migrations"
TOUCHPOINTS = "touchpoints"
JOURNEYS = "journeys"
TRANSITIONS = "journey_transitions"
IDENTITIES = "identities"
FRICTION = "friction"


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


_SCHEMA_MIGRATIONS_DDL = f"""
CREATE TABLE IF NOT EXISTS {SCHEMA_MIGRATIONS}
(
    version    UInt32,
    name       String,
    applied_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY version
"""

# Design notes for `touchpoints` (the queries group by customer and walk time):
# - ReplacingMergeTree keyed on ORDER BY (customer_key, occurred_at, event_id): a journey
#   query reads one customer's events as a contiguous, time-sorted range. Deduplication
#   happens on the whole sorting key, so this key also dedups by event_id because a
#   repeated event_id carries the same customer_key and occurred_at: occurred_at is the
#   producer's, and customer_key is stamped once by the validator on the immutable
#   `touchpoints` topic, so sink retries and replays from offset 0 write identical keys.
#   (The one gap: a producer re-sending an event after the validator's dedup window, once
#   identity resolution has moved its anonymous id to a customer, lands under another
#   customer_key and is not merged.)
# - Merges run in the background, so readers must say FINAL (the query builders do) to
#   see each event once right after an insert. PARTITION BY a function of occurred_at,
#   which is in the sorting key, keeps duplicates in one partition, so FINAL never has to
#   merge across partitions.
# - non_replicated_deduplication_window makes a retried identical insert block (or one
#   with the same insert_deduplication_token) a no-op at insert time, the common duplicate
#   of an at-least-once sink; replicated tables do this by default.
# - inserted_at is the version: among copies of an event the latest write wins.
# - event_id is a String, not UUID: a batch must never fail on a spelling the validator
#   let through, and as the last key column its size barely matters.
# - Optional ids are non-nullable String defaulting to '': no null map to read, and ''
#   means absent (EVENTS.md ids are at least one character).
# - properties stays the raw JSON object as a String (plus MATERIALIZED hot columns)
#   rather than the JSON type: JSONExtract* works on it in every ClickHouse and chDB
#   version, unknown extra properties are kept byte for byte, and the JSON type needs
#   ClickHouse 25.3+ (or experimental flags) on a server. MATERIALIZED columns are
#   computed once at insert and are not in SELECT *; name them.
_TOUCHPOINTS_DDL = f"""
CREATE TABLE IF NOT EXISTS {TOUCHPOINTS}
(
    event_id       String,
    schema_version UInt16,
    type           LowCardinality(String),
    occurred_at    DateTime64(3, 'UTC'),
    received_at    DateTime64(3, 'UTC'),
    channel        LowCardinality(String),
    customer_key   String,
    customer_id    String DEFAULT '',
    anonymous_id   String DEFAULT '',
    session_id     String DEFAULT '',
    case_id        String DEFAULT '',
    source         LowCardinality(String) DEFAULT '',
    properties     String DEFAULT '{{}}' CODEC(ZSTD(3)),
    revenue        Nullable(Decimal(18, 4))
                   MATERIALIZED JSONExtract(properties, 'revenue', 'Nullable(Decimal(18, 4))'),
    amount         Nullable(Decimal(18, 4))
                   MATERIALIZED JSONExtract(properties, 'amount', 'Nullable(Decimal(18, 4))'),
    currency       LowCardinality(String) MATERIALIZED JSONExtractString(properties, 'currency'),
    campaign       String MATERIALIZED JSONExtractString(properties, 'campaign'),
    product_id     String MATERIALIZED JSONExtractString(properties, 'product_id'),
    order_id       String MATERIALIZED JSONExtractString(properties, 'order_id'),
    topic          LowCardinality(String) MATERIALIZED JSONExtractString(properties, 'topic'),
    score          Nullable(Float64)
                   MATERIALIZED JSONExtract(properties, 'score', 'Nullable(Float64)'),
    inserted_at    DateTime64(3, 'UTC') DEFAULT now64(3),
    INDEX event_id_bloom event_id TYPE bloom_filter GRANULARITY 4,
    INDEX case_id_bloom case_id TYPE bloom_filter GRANULARITY 4
)
ENGINE = ReplacingMergeTree(inserted_at)
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (customer_key, occurred_at, event_id)
SETTINGS non_replicated_deduplication_window = 1000
"""

# The columns the touchpoint writer fills, with their types, so an insert needs no
# describe round trip. A test checks them against the table that migration 1 creates.
TOUCHPOINT_INSERT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("event_id", "String"),
    ("schema_version", "UInt16"),
    ("type", "LowCardinality(String)"),
    ("occurred_at", "DateTime64(3, 'UTC')"),
    ("received_at", "DateTime64(3, 'UTC')"),
    ("channel", "LowCardinality(String)"),
    ("customer_key", "String"),
    ("customer_id", "String"),
    ("anonymous_id", "String"),
    ("session_id", "String"),
    ("case_id", "String"),
    ("source", "LowCardinality(String)"),
    ("properties", "String"),
)

# The journey read models, fed by the journey projection (streams/journeys.py). Each row
# carries the projection's `version` of its key and an `is_deleted` flag:
# ReplacingMergeTree(version, is_deleted) keeps the newest version and, under FINAL,
# hides keys whose newest row is a deletion (a retracted transition, an anonymous
# journey merged into a customer's). Replays write the same versions, so a replayed
# table equals the live one.
_JOURNEYS_DDL = f"""
CREATE TABLE IF NOT EXISTS {JOURNEYS}
(
    customer_key  String,
    stage         LowCardinality(String),
    first_seen    DateTime64(3, 'UTC'),
    last_seen     DateTime64(3, 'UTC'),
    touchpoints   UInt32,
    by_type       Map(LowCardinality(String), UInt32),
    by_channel    Map(LowCardinality(String), UInt32),
    purchases     UInt32,
    revenue       Map(LowCardinality(String), Float64),
    refunds       Map(LowCardinality(String), Float64),
    open_cases    Array(String),
    last_csat     Nullable(Float64),
    last_nps      Nullable(Float64),
    anonymous_ids Array(String),
    recent        String DEFAULT '[]' CODEC(ZSTD(3)),
    version       UInt64,
    is_deleted    UInt8 DEFAULT 0,
    updated_at    DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(version, is_deleted)
ORDER BY customer_key
"""

_TRANSITIONS_DDL = f"""
CREATE TABLE IF NOT EXISTS {TRANSITIONS}
(
    transition_id String,
    customer_key  String,
    from_stage    LowCardinality(String),
    to_stage      LowCardinality(String),
    from_type     LowCardinality(String),
    to_type       LowCardinality(String),
    event_id      String,
    occurred_at   DateTime64(3, 'UTC'),
    version       UInt64,
    is_deleted    UInt8 DEFAULT 0
)
ENGINE = ReplacingMergeTree(version, is_deleted)
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (customer_key, occurred_at, transition_id)
"""

# One row per anonymous id: the customer its earliest identify linked it to.
_IDENTITIES_DDL = f"""
CREATE TABLE IF NOT EXISTS {IDENTITIES}
(
    anonymous_id String,
    customer_id  String,
    linked_at    DateTime64(3, 'UTC'),
    event_id     String,
    conflicts    UInt32,
    version      UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY anonymous_id
"""

# One row per friction found by the detectors (streams/friction.py), deduplicated on
# friction_id: the id is a function of rule, customer_key and evidence, so the sorting key
# (customer_key, friction_id) holds one row per friction however often it was written (a
# replay, a sink retry). Readers say FINAL. `kind` is the rule's variant (first_response
# or resolution for an sla_breach, ...), `evidence` the triggering touchpoints' event ids.
_FRICTION_DDL = f"""
CREATE TABLE IF NOT EXISTS {FRICTION}
(
    friction_id  String,
    rule         LowCardinality(String),
    kind         LowCardinality(String),
    severity     LowCardinality(String),
    customer_key String,
    occurred_at  DateTime64(3, 'UTC'),
    detected_at  DateTime64(3, 'UTC'),
    stage        LowCardinality(String),
    case_id      String,
    channel      LowCardinality(String),
    evidence     Array(String),
    message      String,
    inserted_at  DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(inserted_at)
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (customer_key, friction_id)
"""

# Friction that late evidence disproved is retracted (EVENTS.md 1.1): a row with
# is_deleted = 1 and a higher version, so FINAL hides it. The version is the detection
# time in epoch milliseconds: a later record of a friction id replaces an earlier one.
_FRICTION_COLUMNS = """
    friction_id  String,
    rule         LowCardinality(String),
    kind         LowCardinality(String),
    severity     LowCardinality(String),
    customer_key String,
    occurred_at  DateTime64(3, 'UTC'),
    detected_at  DateTime64(3, 'UTC'),
    stage        LowCardinality(String),
    case_id      String,
    channel      LowCardinality(String),
    evidence     Array(String),
    message      String,
    inserted_at  DateTime64(3, 'UTC') DEFAULT now64(3),
    version      UInt64,
    is_deleted   UInt8"""
_FRICTION_NEXT = "friction_next"
_FRICTION_V1 = "friction_v1"
_FRICTION_V1_COLUMNS = ("friction_id, rule, kind, severity, customer_key, occurred_at, "
                        "detected_at, stage, case_id, channel, evidence, message, inserted_at")
_FRICTION_RETRACTABLE = (
    f"""
CREATE TABLE IF NOT EXISTS {_FRICTION_NEXT}
({_FRICTION_COLUMNS}
)
ENGINE = ReplacingMergeTree(version, is_deleted)
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (customer_key, friction_id)
""",
    f"INSERT INTO {_FRICTION_NEXT} ({_FRICTION_V1_COLUMNS}, version, is_deleted) "
    f"SELECT {_FRICTION_V1_COLUMNS}, toUnixTimestamp64Milli(detected_at), 0 FROM {FRICTION}",
    f"RENAME TABLE {FRICTION} TO {_FRICTION_V1}, {_FRICTION_NEXT} TO {FRICTION}",
    f"DROP TABLE {_FRICTION_V1}",
)

# What `journey replay` empties and rebuilds from the event store.
REBUILT_TABLES: tuple[str, ...] = (TOUCHPOINTS, JOURNEYS, TRANSITIONS, IDENTITIES, FRICTION)

# The columns the journey projection writes per table (defaults fill the rest).
READ_MODEL_COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {
    JOURNEYS: (
        ("customer_key", "String"),
        ("stage", "LowCardinality(String)"),
        ("first_seen", "DateTime64(3, 'UTC')"),
        ("last_seen", "DateTime64(3, 'UTC')"),
        ("touchpoints", "UInt32"),
        ("by_type", "Map(LowCardinality(String), UInt32)"),
        ("by_channel", "Map(LowCardinality(String), UInt32)"),
        ("purchases", "UInt32"),
        ("revenue", "Map(LowCardinality(String), Float64)"),
        ("refunds", "Map(LowCardinality(String), Float64)"),
        ("open_cases", "Array(String)"),
        ("last_csat", "Nullable(Float64)"),
        ("last_nps", "Nullable(Float64)"),
        ("anonymous_ids", "Array(String)"),
        ("recent", "String"),
        ("version", "UInt64"),
        ("is_deleted", "UInt8"),
    ),
    TRANSITIONS: (
        ("transition_id", "String"),
        ("customer_key", "String"),
        ("from_stage", "LowCardinality(String)"),
        ("to_stage", "LowCardinality(String)"),
        ("from_type", "LowCardinality(String)"),
        ("to_type", "LowCardinality(String)"),
        ("event_id", "String"),
        ("occurred_at", "DateTime64(3, 'UTC')"),
        ("version", "UInt64"),
        ("is_deleted", "UInt8"),
    ),
    IDENTITIES: (
        ("anonymous_id", "String"),
        ("customer_id", "String"),
        ("linked_at", "DateTime64(3, 'UTC')"),
        ("event_id", "String"),
        ("conflicts", "UInt32"),
        ("version", "UInt64"),
    ),
    FRICTION: (
        ("friction_id", "String"),
        ("rule", "LowCardinality(String)"),
        ("kind", "LowCardinality(String)"),
        ("severity", "LowCardinality(String)"),
        ("customer_key", "String"),
        ("occurred_at", "DateTime64(3, 'UTC')"),
        ("detected_at", "DateTime64(3, 'UTC')"),
        ("stage", "LowCardinality(String)"),
        ("case_id", "String"),
        ("channel", "LowCardinality(String)"),
        ("evidence", "Array(String)"),
        ("message", "String"),
        ("version", "UInt64"),
        ("is_deleted", "UInt8"),
    ),
}

# The touchpoints columns computed at insert (MATERIALIZED in the DDL above).
TOUCHPOINT_MATERIALIZED_COLUMNS: tuple[str, ...] = (
    "revenue", "amount", "currency", "campaign", "product_id", "order_id", "topic", "score",
)  # fmt: skip

# Every column a query may name, by table: what the writers fill plus what the DDL
# computes or defaults. A test checks them against the migrated tables.
READABLE_COLUMNS: dict[str, frozenset[str]] = {
    TOUCHPOINTS: frozenset(
        [*(name for name, _ in TOUCHPOINT_INSERT_COLUMNS), *TOUCHPOINT_MATERIALIZED_COLUMNS,
         "inserted_at"]
    ),
    JOURNEYS: frozenset([*(name for name, _ in READ_MODEL_COLUMNS[JOURNEYS]), "updated_at"]),
    TRANSITIONS: frozenset(name for name, _ in READ_MODEL_COLUMNS[TRANSITIONS]),
    IDENTITIES: frozenset(name for name, _ in READ_MODEL_COLUMNS[IDENTITIES]),
    FRICTION: frozenset([*(name for name, _ in READ_MODEL_COLUMNS[FRICTION]), "inserted_at"]),
}


class UnknownColumnError(ValueError):
    """A name that is no column of the table in the registry."""


# Only `column()` holds this, so only it can build a Column.
_REGISTRY_KEY = object()


class Column:
    """A column of a registry table: the only kind of identifier a query builder writes
    into SQL text. `column()` builds one after checking the name against the registry;
    calling Column() directly raises, so a name from outside can never become one
    without that check."""

    __slots__ = ("name", "table")

    def __init__(self, table: str, name: str, key: object = None) -> None:
        if key is not _REGISTRY_KEY:
            raise TypeError("a Column comes from the table registry: use column(table, name)")
        self.table = table
        self.name = name

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"column({self.table!r}, {self.name!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Column) and (self.table, self.name) == (other.table, other.name)

    def __hash__(self) -> int:
        return hash((self.table, self.name))


def column(table: str, name: str) -> Column:
    """The column `name` of `table`; UnknownColumnError when the registry has no such."""
    if name not in READABLE_COLUMNS.get(table, frozenset()):
        raise UnknownColumnError(f"the {table} table has no column {name!r}")
    return Column(table, name, _REGISTRY_KEY)


def columns(table: str, *names: str) -> tuple[Column, ...]:
    """Several columns of one table (see column())."""
    return tuple(column(table, name) for name in names)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "create touchpoints", (_TOUCHPOINTS_DDL,)),
    Migration(2, "create journeys, transitions and identities",
              (_JOURNEYS_DDL, _TRANSITIONS_DDL, _IDENTITIES_DDL)),
    Migration(3, "create friction", (_FRICTION_DDL,)),
    Migration(4, "friction retractions: version and is_deleted", _FRICTION_RETRACTABLE),
)


def _check_order(migrations: tuple[Migration, ...]) -> None:
    versions = [m.version for m in migrations]
    if versions != list(range(1, len(versions) + 1)):
        raise AssertionError(f"migration versions must run 1, 2, 3, ... without gaps: {versions}")


_check_order(MIGRATIONS)


def applied_versions(warehouse: Warehouse) -> set[int]:
    """Versions recorded in schema_migrations (empty when the table does not exist yet)."""
    exists = warehouse.query(
        "SELECT count() FROM system.tables"
        " WHERE database = currentDatabase() AND name = {t:String}",
        {"t": SCHEMA_MIGRATIONS},
    ).scalar()
    if not exists:
        return set()
    result = warehouse.query(f"SELECT DISTINCT version FROM {SCHEMA_MIGRATIONS}")
    return {int(row[0]) for row in result.rows}


def migrate(warehouse: Warehouse) -> list[Migration]:
    """Apply the migrations the warehouse lacks, in order; return those applied.

    Running it again applies nothing. Fails when the warehouse was migrated by newer code.
    """
    warehouse.command(_SCHEMA_MIGRATIONS_DDL)
    done = applied_versions(warehouse)
    newest = MIGRATIONS[-1].version
    if done and max(done) > newest:
        raise WarehouseError(
            f"the warehouse at {warehouse.location} has schema version {max(done)}, newer than "
            f"this code knows ({newest}): upgrade journey"
        )
    applied: list[Migration] = []
    for migration in MIGRATIONS:
        if migration.version in done:
            continue
        for statement in migration.statements:
            warehouse.command(statement)
        warehouse.insert(
            SCHEMA_MIGRATIONS,
            [[migration.version], [migration.name], [datetime.now(UTC)]],
            ["version", "name", "applied_at"],
            column_types=["UInt32", "String", "DateTime64(3, 'UTC')"],
        )
        applied.append(migration)
    return applied
