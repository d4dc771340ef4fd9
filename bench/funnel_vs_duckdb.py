"""Funnel benchmark: the engine's 5-step breakdown funnel on chDB against DuckDB on the same rows.

Run from the repository root:

    .venv/bin/python bench/funnel_vs_duckdb.py [--rows N] [--people P] [--runs R] [--json out.json]

Phases, one after another so that the two engines never share the CPU: generate the
touchpoints inside chDB (INSERT ... SELECT FROM numbers), OPTIMIZE FINAL, export them to
Parquet, load that into a native DuckDB table, check that both engines give the same
per-step per-channel counts, then time each engine `--runs` times warm.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere, like bench/throughput.py
    sys.path.insert(0, str(ROOT))

from projections.clickhouse.client import Warehouse, connect  # noqa: E402
from projections.clickhouse.funnels import (  # noqa: E402
    funnel_query,
    parse_funnel,
    takes_chain_path,
)
from projections.clickhouse.readonly import run_readonly  # noqa: E402
from projections.clickhouse.tables import TOUCHPOINTS, migrate  # noqa: E402

STEPS = ("ad_impression", "site_visit", "product_view", "add_to_cart", "purchase")
WINDOW = "7d"
WINDOW_DAYS = 7
# Ten types in all: the funnel's five at decreasing frequency and five it never reads
# (neither engine may gain from the filter being trivial). Per mille of the rows.
TYPE_WEIGHTS: tuple[tuple[str, int], ...] = (
    ("ad_impression", 300),
    ("site_visit", 200),
    ("product_view", 150),
    ("add_to_cart", 80),
    ("purchase", 40),
    ("page_view", 90),
    ("email_opened", 60),
    ("search", 40),
    ("support_contact", 25),
    ("review", 15),
)
CHANNELS = ("web", "app", "email", "paid_search", "social")
START = datetime(2026, 1, 1, tzinfo=UTC)
SPAN_DAYS = 60
# A person is active for ACTIVE_DAYS from a day of their own; an event's stage (its
# funnel position, random for the other types) pushes it later by STAGE_HOURS per step,
# so that journeys tend to run in funnel order as real ones do and deep steps get reached.
ACTIVE_DAYS = 10
STAGE_HOURS = 30
CHUNKS = 20  # inserts per run: progress granularity, and bounded memory per insert

console = Console()


# ---- data ------------------------------------------------------------------------------


def _type_sql(bucket: str) -> str:
    # cumulative thresholds over a 0..999 bucket: one multiIf, no lookup table
    parts: list[str] = []
    upto = 0
    for name, weight in TYPE_WEIGHTS[:-1]:
        upto += weight
        parts.append(f"{bucket} < {upto}, '{name}'")
    return f"multiIf({', '.join(parts)}, '{TYPE_WEIGHTS[-1][0]}')"


def generate_sql(start: int, count: int, people: int) -> str:
    """INSERT ... SELECT of `count` touchpoints numbered from `start`: deterministic, since
    every random draw is a cityHash64 of the row number (or the person) and a salt."""
    n = "number"
    person = f"cityHash64({n}, 1) % {people}"
    type_sql = _type_sql(f"cityHash64({n}, 2) % 1000")
    stage = (
        f"transform(type, {list(STEPS)!r}, {list(range(len(STEPS)))!r}, "
        f"toUInt8(cityHash64({n}, 5) % {len(STEPS)}))"
    )
    day_ms = 86_400_000
    first_day = f"cityHash64(person, 3) % {SPAN_DAYS - ACTIVE_DAYS}"
    offset_ms = (
        f"{first_day} * {day_ms} + {stage} * {STAGE_HOURS * 3_600_000}"
        f" + cityHash64({n}, 4) % {(ACTIVE_DAYS * day_ms) - len(STEPS) * STAGE_HOURS * 3_600_000}"
    )
    channels = f"{list(CHANNELS)!r}[1 + cityHash64({n}, 6) % {len(CHANNELS)}]"
    base_ms = int(START.timestamp() * 1000)
    return f"""
INSERT INTO {TOUCHPOINTS}
    (event_id, schema_version, type, occurred_at, received_at, channel, customer_key,
     customer_id, anonymous_id, session_id, case_id, source, properties)
SELECT
    concat('e', leftPad(toString({n}), 12, '0')) AS event_id,
    toUInt16(1),
    {type_sql} AS type,
    fromUnixTimestamp64Milli(toInt64({base_ms} + {offset_ms}), 'UTC') AS occurred_at,
    occurred_at,
    {channels},
    concat('c', leftPad(toString(person), 9, '0')) AS customer,
    customer,
    '', '', '', 'bench', '{{}}'
FROM (SELECT number, {person} AS person FROM numbers({start}, {count}))
"""


def generate(warehouse: Warehouse, rows: int, people: int) -> float:
    """Fill the touchpoints table in chunks, with a progress line; returns the seconds."""
    started = time.perf_counter()
    size = -(-rows // CHUNKS)
    with Progress(
        TextColumn("[bold]generating touchpoints in chDB"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("rows", total=rows, rate="")
        for start in range(0, rows, size):
            count = min(size, rows - start)
            warehouse.command(generate_sql(start, count, people))
            progress.update(task, advance=count)
            done = start + count
            progress.update(task, rate=f"{done / (time.perf_counter() - started):,.0f} rows/s")
    return time.perf_counter() - started


EXPORT_COLUMNS = "event_id, type, channel, occurred_at, customer_key, customer_id, anonymous_id"


def export_parquet(warehouse: Warehouse, path: Path) -> None:
    """Write the deduplicated rows to Parquet with chDB itself (the read-only gate is for
    analysts' statements; this is the harness's own write)."""
    warehouse.command(
        f"INSERT INTO FUNCTION file('{path}', 'Parquet') "
        f"SELECT {EXPORT_COLUMNS} FROM {TOUCHPOINTS} FINAL",
        settings={"output_format_parquet_compression_method": "zstd"},
    )


# ---- the question, two ways ------------------------------------------------------------

# The analyst's formulation: one ASOF join per step. For each step-1 event, ASOF picks
# the person's earliest event of the next type strictly after the previous step's time,
# which is the greedy earliest ordered chain; it stays within the window iff the step's
# time is at most start + 7 days (steps only get later, so counting the in-window ones
# gives the depth). A person counts once, with their deepest chain, ties to the
# earliest start (occurred_at, then event_id), broken down by that start's channel.
DUCKDB_SQL = f"""
WITH
ev AS (
    SELECT customer_id AS person, occurred_at AS ts, event_id, type, channel
    FROM touchpoints
    WHERE type IN {tuple(STEPS)!r}
),
s1 AS (SELECT person, ts, event_id, channel FROM ev WHERE type = '{STEPS[0]}'),
s2 AS (SELECT person, ts FROM ev WHERE type = '{STEPS[1]}'),
s3 AS (SELECT person, ts FROM ev WHERE type = '{STEPS[2]}'),
s4 AS (SELECT person, ts FROM ev WHERE type = '{STEPS[3]}'),
s5 AS (SELECT person, ts FROM ev WHERE type = '{STEPS[4]}'),
chains AS (
    SELECT
        s1.person, s1.ts AS t1, s1.event_id, s1.channel,
        1 + (coalesce(s2.ts <= s1.ts + INTERVAL {WINDOW_DAYS} DAY, false))::INT
          + (coalesce(s3.ts <= s1.ts + INTERVAL {WINDOW_DAYS} DAY, false))::INT
          + (coalesce(s4.ts <= s1.ts + INTERVAL {WINDOW_DAYS} DAY, false))::INT
          + (coalesce(s5.ts <= s1.ts + INTERVAL {WINDOW_DAYS} DAY, false))::INT AS level
    FROM s1
    ASOF LEFT JOIN s2 ON s2.person = s1.person AND s2.ts > s1.ts
    ASOF LEFT JOIN s3 ON s3.person = s1.person AND s3.ts > s2.ts
    ASOF LEFT JOIN s4 ON s4.person = s1.person AND s4.ts > s3.ts
    ASOF LEFT JOIN s5 ON s5.person = s1.person AND s5.ts > s4.ts
),
people AS (
    SELECT person, max(level) AS level,
           arg_min(channel, {{'l': -level, 't': t1, 'e': event_id}}) AS channel
    FROM chains
    GROUP BY person
)
SELECT channel, step, count(*) FILTER (WHERE level >= step) AS people
FROM people, range(1, {len(STEPS) + 1}) AS steps(step)
GROUP BY channel, step
ORDER BY channel, step
"""

Counts = dict[tuple[str | None, int], int]


def ours_counts(rows: Sequence[Sequence[Any]]) -> Counts:
    """(channel, step) -> people from funnel_query rows; channel None is everybody."""
    return {(None if int(row[1]) else str(row[0]), int(row[2])): int(row[3]) for row in rows}


def duckdb_counts(rows: Sequence[Sequence[Any]]) -> Counts:
    counts: Counts = {}
    for channel, step, people in rows:
        counts[(str(channel), int(step))] = int(people)
        counts[(None, int(step))] = counts.get((None, int(step)), 0) + int(people)
    return counts


def timed(run: Callable[[], Any], runs: int, label: str) -> tuple[list[float], Any]:
    """One untimed warm-up run, then `runs` timed ones; returns the times and last result."""
    with console.status(f"[bold]{label}: warm-up"):
        result = run()
    times: list[float] = []
    for i in range(runs):
        with console.status(f"[bold]{label}: run {i + 1}/{runs}"):
            began = time.perf_counter()
            result = run()
            times.append(time.perf_counter() - began)
        console.print(f"  {label} run {i + 1}: {times[-1]:.3f} s  load {_load()}")
    return times, result


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "?"


# ---- main ------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--people", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.rows < 1 or args.people < 1 or args.runs < 1:
        parser.error("--rows, --people and --runs must be positive")

    import duckdb  # heavy: only once the arguments are known

    machine = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "chdb": _version("chdb"),
        "clickhouse_connect": _version("clickhouse-connect"),
        "duckdb": duckdb.__version__,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    console.print(
        f"[bold]funnel vs DuckDB[/]: {args.rows:,} touchpoints, {args.people:,} people, "
        f"{args.runs} runs; {machine['cpus']} CPUs, load {_load()}"
    )
    scratch = Path(tempfile.mkdtemp(prefix="funnel-bench-"))
    report: dict[str, Any] = {
        "command": " ".join(["python bench/funnel_vs_duckdb.py", *(argv or sys.argv[1:])]),
        "rows_requested": args.rows,
        "people": args.people,
        "runs": args.runs,
        "steps": list(STEPS),
        "window": WINDOW,
        "breakdown": "channel (of the counted attempt's step-1 event)",
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine,
    }
    try:
        with connect(f"chdb://{scratch / 'warehouse'}") as warehouse:
            migrate(warehouse)
            report["generate_seconds"] = round(generate(warehouse, args.rows, args.people), 2)
            with console.status("[bold]OPTIMIZE TABLE touchpoints FINAL (not timed)"):
                began = time.perf_counter()
                warehouse.command(f"OPTIMIZE TABLE {TOUCHPOINTS} FINAL")
                report["optimize_seconds"] = round(time.perf_counter() - began, 2)
            rows = int(warehouse.query(f"SELECT count() FROM {TOUCHPOINTS} FINAL").scalar())
            report["rows"] = rows
            console.print(
                f"  {rows:,} rows after OPTIMIZE FINAL "
                f"(generated in {report['generate_seconds']} s, optimized in "
                f"{report['optimize_seconds']} s)"
            )

            parquet = scratch / "touchpoints.parquet"
            with console.status("[bold]exporting to Parquet"):
                began = time.perf_counter()
                export_parquet(warehouse, parquet)
                report["export_seconds"] = round(time.perf_counter() - began, 2)
            with console.status("[bold]loading into a native DuckDB table (not timed)"):
                began = time.perf_counter()
                db = duckdb.connect(str(scratch / "bench.duckdb"))
                # same thread count as chDB's max_threads default: the box's cores
                db.execute(f"SET threads = {os.cpu_count() or 1}")
                db.execute("SET TimeZone = 'UTC'")
                db.execute(
                    "CREATE TABLE touchpoints AS SELECT event_id, type, channel, "
                    "occurred_at::TIMESTAMP AS occurred_at, customer_key, customer_id, "
                    f"anonymous_id FROM read_parquet('{parquet}')"
                )
                loaded = db.execute("SELECT count(*) FROM touchpoints").fetchone()
                report["duckdb_load_seconds"] = round(time.perf_counter() - began, 2)
            report["duckdb_rows"] = int(loaded[0]) if loaded else 0
            console.print(
                f"  Parquet export {report['export_seconds']} s "
                f"({parquet.stat().st_size / 1e6:,.0f} MB); DuckDB load "
                f"{report['duckdb_load_seconds']} s, {report['duckdb_rows']:,} rows"
            )

            spec = parse_funnel(list(STEPS), window=WINDOW, breakdown="channel")
            report["path"] = "chain" if takes_chain_path(spec) else "general walk"
            sql, params = funnel_query(spec)

            def run_ours() -> list[tuple[Any, ...]]:
                return run_readonly(warehouse, sql, params).rows

            def run_duckdb() -> list[tuple[Any, ...]]:
                return db.execute(DUCKDB_SQL).fetchall()

            ours_times, ours_rows = timed(run_ours, args.runs, "ours (chDB)")
            duck_times, duck_rows = timed(run_duckdb, args.runs, "DuckDB")
            db.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    ours, theirs = ours_counts(ours_rows), duckdb_counts(duck_rows)
    keys = sorted(set(ours) | set(theirs), key=lambda k: (k[0] is not None, k[0] or "", k[1]))
    mismatches = [
        {"channel": k[0], "step": k[1], "ours": ours.get(k, 0), "duckdb": theirs.get(k, 0)}
        for k in keys
        if ours.get(k, 0) != theirs.get(k, 0)
    ]
    machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]

    def summary(times: list[float]) -> dict[str, Any]:
        return {
            "best": round(min(times), 4),
            "median": round(statistics.median(times), 4),
            "runs": [round(t, 4) for t in times],
        }

    report["ours"] = summary(ours_times)
    report["duckdb"] = summary(duck_times)
    report["ratio_best"] = round(min(duck_times) / min(ours_times), 3)
    report["ratio_median"] = round(statistics.median(duck_times) / statistics.median(ours_times), 3)
    report["counts_equal"] = not mismatches
    report["mismatches"] = mismatches
    report["counts"] = [
        {"channel": k[0] or "(all)", "step": k[1], "people": ours.get(k, 0)} for k in keys
    ]

    counts = Table(title="people reaching each step (ours; DuckDB must agree)")
    counts.add_column("channel")
    for step in STEPS:
        counts.add_column(step, justify="right")
    for channel in [None, *sorted({k[0] for k in keys if k[0] is not None})]:
        counts.add_row(
            channel or "[bold](all)",
            *(f"{ours.get((channel, s), 0):,}" for s in range(1, len(STEPS) + 1)),
        )
    console.print(counts)

    table = Table(title=f"5-step funnel, 7d window, breakdown by channel, {rows:,} touchpoints")
    table.add_column("engine")
    table.add_column("best s", justify="right")
    table.add_column("median s", justify="right")
    table.add_column("strategy")
    table.add_row(
        "ours (chDB " + machine["chdb"] + ")",
        f"{min(ours_times):.3f}",
        f"{statistics.median(ours_times):.3f}",
        "funnel_query, chain path: per-step time arrays + merge per step",
    )
    table.add_row(
        "DuckDB " + machine["duckdb"],
        f"{min(duck_times):.3f}",
        f"{statistics.median(duck_times):.3f}",
        "4 chained ASOF LEFT JOINs + arg_min per person",
    )
    console.print(table)
    verdict = "[green]equal[/]" if not mismatches else f"[red]{len(mismatches)} differ[/]"
    console.print(
        f"ratio DuckDB / ours: best {report['ratio_best']:.2f}x, "
        f"median {report['ratio_median']:.2f}x; counts {verdict}; "
        f"load average start {machine['load_average_at_start']} "
        f"end {machine['load_average_at_end']}"
    )
    for item in mismatches[:20]:
        console.print(f"  [red]mismatch[/] {item}")
    if args.json:
        args.json.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
        console.print(f"wrote {args.json}")
    return 0 if not mismatches else 2


if __name__ == "__main__":
    raise SystemExit(main())
