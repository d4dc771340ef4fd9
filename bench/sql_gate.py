"""What the analysts' SQL gate costs per statement: its first look and a repeat, on chDB.

Run from the repository root:

    .venv/bin/python bench/sql_gate.py [--runs R]

For each analysis statement the engine builds (and a few ad-hoc ones) it times the gate's
first inspection of the text (format on the engine, EXPLAIN AST, the checks) and a
repeat of the same text (the kept inspection plus the file-name check), median of
`--runs`. The gate reads no data, so an empty warehouse gives the same times.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from projections.analysis.funnel import parse_funnel  # noqa: E402
from projections.analysis.impact import ImpactSpec, impact_funnel  # noqa: E402
from projections.analysis.kpis import KpiSpec  # noqa: E402
from projections.analysis.paths import FlowsSpec, PathsSpec  # noqa: E402
from projections.analysis.retention import RetentionSpec  # noqa: E402
from projections.clickhouse import readonly  # noqa: E402
from projections.clickhouse.builders import build  # noqa: E402
from projections.clickhouse.client import Warehouse, connect  # noqa: E402
from projections.clickhouse.tables import migrate  # noqa: E402

STATEMENTS: dict[str, Callable[[], tuple[str, dict[str, object]]]] = {
    "SELECT count() FROM touchpoints": lambda: ("SELECT count() FROM touchpoints", {}),
    "SELECT ... FROM system.tables": lambda: (
        "SELECT database, name, engine FROM system.tables WHERE database != 'system'", {}),
    "funnel, 5 steps, breakdown": lambda: build(parse_funnel(
        ["ad_impression", "site_visit", "product_view", "add_to_cart", "purchase"],
        window="7d", breakdown="channel")),
    "paths": lambda: build(PathsSpec(end_at="purchase")),
    "flows": lambda: build(FlowsSpec()),
    "retention": lambda: build(RetentionSpec()),
    "kpis": lambda: build(KpiSpec()),
    "friction impact": lambda: build(ImpactSpec(impact_funnel(None, "7d"))),
}


def median_ms(action: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        action()
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times)


def time_statement(warehouse: Warehouse, sql: str, params: dict[str, object],
                   runs: int) -> tuple[int, float, float]:
    """AST lines, and the median ms of a first inspection and of a repeat."""
    statement = readonly.check_readonly(sql)
    catalog = readonly._catalog(warehouse)

    def first() -> None:
        with catalog.lock:
            catalog.inspected.clear()
        readonly.inspect_statement(warehouse, statement, params)

    canonical = readonly.inspect_statement(warehouse, statement, params)
    lines = len(warehouse.query(f"EXPLAIN AST {canonical}", params).rows)
    cold = median_ms(first, runs)
    readonly.inspect_statement(warehouse, statement, params)
    warm = median_ms(lambda: readonly.inspect_statement(warehouse, statement, params), runs)
    return lines, cold, warm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, connect(f"chdb://{folder}") as warehouse:
        migrate(warehouse)
        print(f"{'statement':<32} {'chars':>6} {'AST lines':>9} {'first ms':>9} {'repeat ms':>9}")
        for name, build in STATEMENTS.items():
            sql, params = build()
            lines, cold, warm = time_statement(warehouse, sql, params, args.runs)
            print(f"{name:<32} {len(sql):>6} {lines:>9} {cold:>9.2f} {warm:>9.2f}")


if __name__ == "__main__":
    main()
