"""Projection benchmark: identity + journey + ClickHouse, live and on replay, against raw consume.

Run from the repository root:

    .venv/bin/python bench/projection.py [--events N] [--seed S] [--json out.json]

Phases run one after another so that no two measured things share the CPU:
pre-produce -> validator (not timed) -> raw aiokafka loop over `touchpoints` ->
live projection worker -> `journey replay` of the same store. See bench/README.md.
"""

from __future__ import annotations

import asyncio
import math
import os
import shutil
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from rich.progress import Progress
from rich.table import Table

# Run as a script, only bench/ is on sys.path: the root is needed to reuse the
# foundation benchmark's phases instead of copying them.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.throughput import (
    POLL_SECONDS,
    RESULTS,
    STALL_SECONDS,
    BenchError,
    Rate,
    bench_main,
    bench_settings,
    console,
    create_scratch_topic,
    kafka_for,
    phase,
    produce,
    raw_loop,
    running_worker,
    topic_total,
    valid_messages,
    watch,
    worker_settings,
)
from journey.settings import Settings
from journey.worker import worker_status

# Apart from the defaults (19092/6066), the integration tests (39092/36066) and the
# foundation benchmark (49092/46066), which may run at the same time.
KAFKA_PORT, KAFKA_CONTROLLER_PORT, WORKER_PORT = 51092, 51093, 56066
HOME = RESULTS / "projection-home"
LAG_POLL_SECONDS = 0.5  # each lag poll opens six short-lived clients: not too often
# Lags frozen this long after every touchpoint is applied and stored count as a stall:
# the work has visibly ended, so waiting the foundation's 90 s only delays the report.
LIVE_STALL_SECONDS = 30.0
REPLAY_TIMEOUT = 150.0  # replay() waits up to an hour by default


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


@dataclass
class Report:
    events: int
    seed: int
    run_id: str
    started_at: str
    machine: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    rates: dict[str, Rate] = field(default_factory=dict)
    journey: dict[str, Any] = field(default_factory=dict)  # the live worker's counters
    rows_live: dict[str, int] = field(default_factory=dict)
    rows_replay: dict[str, int] = field(default_factory=dict)
    load: dict[str, list[float]] = field(default_factory=dict)  # per phase, at its end
    checks: dict[str, Any] = field(default_factory=dict)

    def rate(self, key: str) -> float:
        return self.rates[key].per_second if key in self.rates else math.nan

    def ratios(self) -> dict[str, float]:
        return {
            "live projection (steady) / raw loop": self.rate("live") / self.rate("raw_loop"),
            "live projection (incl. start) / raw loop":
                self.rate("live_cold") / self.rate("raw_loop"),
            # Replay's clock starts before its worker is spawned: compare it with the
            # live figure that also includes the worker start.
            "replay / live (both incl. start)": self.rate("replay") / self.rate("live_cold"),
            "replay / live (steady)": self.rate("replay") / self.rate("live"),
            "live applied+stored / raw loop": self.rate("live_applied") / self.rate("raw_loop"),
        }

    def as_json(self) -> dict[str, Any]:
        return {
            "command": " ".join(["python bench/projection.py", *sys.argv[1:]]),
            "events": self.events,
            "seed": self.seed,
            "run_id": self.run_id,
            "started_at": self.started_at,
            "machine": self.machine,
            "settings": self.settings,
            "rates": {k: {**asdict(r), "per_second": round(r.per_second, 1)}
                      for k, r in self.rates.items()},
            "ratios": {k: round(v, 4) for k, v in self.ratios().items()},
            "journey_counters": self.journey,
            "rows_live": self.rows_live,
            "rows_replay": self.rows_replay,
            "load_average": self.load,
            "checks": self.checks,
        }


def projection_settings(run_id: str) -> Settings:
    """The foundation benchmark's naming, on this benchmark's broker, ports and home."""
    return bench_settings(f"proj-{run_id}").model_copy(update={
        "home": HOME, "kafka_port": KAFKA_PORT, "kafka_controller_port": KAFKA_CONTROLLER_PORT,
        "worker_port": WORKER_PORT})


def identify_count(messages: list[tuple[bytes | None, bytes]]) -> int:
    return sum(1 for _, value in messages if orjson.loads(value).get("type") == "identify")


@dataclass
class LiveRun:
    spawned: float
    ready: float
    first_at: float  # first /status poll showing any projection work
    end_at: float  # first lag poll with every group at 0, or the last poll on a stall
    applied_at: float  # first poll with every touchpoint applied and stored
    counters: dict[str, Any]
    rows: dict[str, int]
    stuck_lags: dict[str, int] | None  # None when every group caught up


def time_live(settings: Settings, events: int, progress: Progress) -> LiveRun:
    """Run a projection worker until every projection consumer group has lag 0."""
    from journey.replay import _row_counts, projection_lags

    task = progress.add_task("live: caught up", total=events)
    with running_worker(settings) as (worker, spawned, ready):
        first_at: float | None = None
        applied_at: float | None = None
        stuck: dict[str, int] | None = None
        last_lag, last_change = -1, time.perf_counter()
        while True:
            now = time.perf_counter()
            # /status is cheap, so the start of consumption is caught to a poll.
            status = worker_status(settings, timeout=2.0)
            if status is None and worker.proc.poll() is not None:
                raise BenchError(f"the live worker exited: see {worker.log_path}")
            c = status["counters"] if status else {}
            applied = c.get("journey", {}).get("applied", 0)
            stored = c.get("written_by_table", {}).get("touchpoints", 0)
            if first_at is None and (applied or c.get("written", 0) or c.get("friction_read")):
                first_at = now
            # a part the worker does not run counts as done
            applied = applied if settings.journeys_enabled else events
            stored = stored if settings.sink_enabled else events
            if applied_at is None and applied >= events and stored >= events \
                    and (c.get("friction_read", 0) >= events or not settings.friction_enabled):
                applied_at = now
            if first_at is None:
                if now - spawned > STALL_SECONDS:
                    raise BenchError(f"the live worker did not start projecting within "
                                     f"{STALL_SECONDS:.0f}s: see {worker.log_path}")
                time.sleep(POLL_SECONDS)
                continue
            lags = asyncio.run(projection_lags(settings))
            end = time.perf_counter()
            total_lag = sum(lags.values())
            # The slowest reader sets the bar.
            behind = max(lags.values())
            progress.update(task, completed=max(0, events - behind))
            if total_lag == 0:
                if applied_at is None:
                    applied_at = end
                break
            if total_lag != last_lag:
                last_lag, last_change = total_lag, end
            elif end - last_change > (LIVE_STALL_SECONDS if applied_at else STALL_SECONDS):
                # Reported, not raised: the figures up to here are still worth having.
                stuck = lags
                end = last_change
                break
            time.sleep(LAG_POLL_SECONDS)
        status = worker_status(settings, timeout=5.0)
        rows = _row_counts(settings)  # via the worker's query API: it holds the warehouse
    if status is None or first_at is None or applied_at is None:
        raise BenchError(f"the live worker never applied and stored all {events:,} "
                         f"touchpoints: see {worker.log_path}")
    return LiveRun(spawned, ready, first_at, end, applied_at, status["counters"], rows, stuck)


def print_report(report: Report) -> None:
    table = Table(title=f"projection - {report.events:,} touchpoints, seed {report.seed}, "
                        f"run {report.run_id}")
    for column in ("figure", "events", "seconds", "events/s"):
        table.add_column(column, justify="left" if column == "figure" else "right")
    for rate in report.rates.values():
        table.add_row(rate.name, f"{rate.count:,}", f"{rate.seconds:.2f}",
                      f"{rate.per_second:,.0f}")
    console.print(table)
    for rate in report.rates.values():
        console.print(f"  [bold]{rate.name}[/bold]: {rate.note}")

    ratios = Table(title="ratios")
    ratios.add_column("ratio")
    ratios.add_column("value", justify="right")
    for name, value in report.ratios().items():
        ratios.add_row(name, f"{value:.1%}")
    console.print(ratios)

    rows = Table(title="rows per table (FINAL)")
    for column in ("table", "after live", "after replay", "match"):
        rows.add_column(column, justify="left" if column == "table" else "right")
    for name in sorted(set(report.rows_live) | set(report.rows_replay)):
        live, again = report.rows_live.get(name), report.rows_replay.get(name)
        same = "[green]yes[/green]" if live == again else "[red]NO[/red]"
        rows.add_row(name, f"{live:,}" if live is not None else "-",
                     f"{again:,}" if again is not None else "-", same)
    console.print(rows)
    j = report.journey
    console.print("journey counters (live): " + ", ".join(f"{k}={v:,}" for k, v in j.items()))
    m = report.machine
    console.print(f"machine: {m['cores']} cores ({m['cpu']}), Python {m['python']}, "
                  f"Kafka {m['kafka']}; load average at start {m['load_average_at_start']}, "
                  + ", ".join(f"after {k} {v}" for k, v in report.load.items()))
    console.print("settings: " + ", ".join(f"{k}={v}" for k, v in report.settings.items()))
    console.print("checks: " + ", ".join(f"{k}={v}" for k, v in report.checks.items()))


def fill_store(base: Settings, run_dir: Path, messages: list[tuple[bytes | None, bytes]],
               ) -> dict[str, Any]:
    """Set-up, not measured: produce the messages to ingest and let a validator-only
    worker fill `touchpoints`, so the phases that follow start from a full store. Returns
    the figures to keep as checks; raises BenchError unless every message is stored."""
    from streams.app import prepare_topics

    events = len(messages)
    asyncio.run(prepare_topics(base))
    with phase("set-up: pre-produce (not measured)") as progress:
        produced = asyncio.run(produce(base, messages, progress))
    validator = worker_settings(base, run_dir, "validator", sink_enabled=False,
                                journeys_enabled=False, friction_enabled=False)
    with phase("set-up: validator (not measured)") as progress, \
            running_worker(validator) as (worker, spawned, ready):
        w = watch(validator, worker, spawned, ready, "valid", events,
                  "validator + dedup: stored", progress)
    stored = asyncio.run(topic_total(base.bootstrap, base.topic_touchpoints))
    if w.counters["valid"] != events or stored != events:
        raise BenchError(f"the validator passed {w.counters['valid']:,} and the topic "
                         f"holds {stored:,} of {events:,}: see {worker.log_path}")
    return {"pre_produce_seconds": round(produced, 1), "touchpoints_on_topic": stored}


def run(events: int, seed: int, keep: bool) -> Report:
    from journey.errors import JourneyError
    from journey.replay import replay

    run_id = datetime.now(UTC).strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:4]
    run_dir = RESULTS / f"projection-run-{run_id}"
    run_dir.mkdir(parents=True, exist_ok=True)
    base = projection_settings(run_id)
    report = Report(events, seed, run_id, datetime.now(UTC).isoformat(timespec="seconds"))
    report.settings = {name: getattr(base, name) for name in (
        "topic_partitions", "validator_batch_size", "sink_batch_size", "sink_batch_seconds")}

    def drop_heavy() -> None:
        if not keep:
            for heavy in ("validator", "projection"):
                for sub in ("warehouse", "worker"):
                    shutil.rmtree(run_dir / heavy / sub, ignore_errors=True)

    with kafka_for(base, on_exit=drop_heavy) as (_, report.machine):
        with console.status(f"generating {events:,} valid touchpoints (seed {seed})..."):
            messages = valid_messages(events, seed)
        report.checks["identify_events"] = identify_count(messages)
        scratch = f"{base.app_id}.raw-loop"
        asyncio.run(create_scratch_topic(base, scratch))
        report.checks.update(fill_store(base, run_dir, messages))
        del messages

        # Baseline over the same input: consume `touchpoints`, produce each record to a
        # scratch topic, flush + commit per batch (the journey agent also produces).
        over_store = base.model_copy(update={"topic_ingest": base.topic_touchpoints})
        with phase("A. raw aiokafka loop over touchpoints") as progress:
            raw = asyncio.run(raw_loop(over_store, scratch, events, progress))
        report.rates["raw_loop"] = Rate(
            "raw aiokafka consume -> produce", raw.count, raw.seconds,
            f"over `touchpoints`, {raw.note}; first record to last commit")
        report.load["raw_loop"] = loadavg()

        # An app id of its own (so Faust groups and changelogs), an ingest topic nobody
        # writes: the validator idles and restores no dedup table while this is timed.
        live = worker_settings(base, run_dir, "projection", app_id=f"{base.app_id}-proj",
                               topic_ingest=f"{base.app_id}.idle.ingest", generation=0,
                               friction_enabled=False)  # bench/friction.py times that
        with phase("B. live projection worker") as progress:
            lr = time_live(live, events, progress)
        caught_up = lr.stuck_lags is None
        end_note = ("the first lag poll with every projection group at 0" if caught_up else
                    "the last lag change before the lags froze (NOT caught up)")
        report.rates["live"] = Rate(
            "live projection (steady)" + ("" if caught_up else " - STALLED"), events,
            lr.end_at - lr.first_at,
            f"first /status poll with journey.applied or written > 0 to {end_note} "
            f"(polls {POLL_SECONDS}s / {LAG_POLL_SECONDS}s)")
        report.rates["live_cold"] = Rate(
            "live projection incl. worker start" + ("" if caught_up else " - STALLED"),
            events, lr.end_at - lr.spawned,
            f"from spawning the worker (ready after {lr.ready - lr.spawned:.1f}s, projecting "
            f"after {lr.first_at - lr.spawned:.1f}s) to {end_note}")
        report.rates["live_applied"] = Rate(
            "live: every touchpoint applied + stored", events, lr.applied_at - lr.first_at,
            "first /status poll with progress to the first with journey.applied and "
            "written_by_table.touchpoints both at N (inbox commands and commits not included)")
        report.load["live"] = loadavg()
        c = lr.counters
        report.journey = dict(c["journey"])
        report.rows_live = lr.rows
        report.checks.update(live_caught_up=caught_up, live_stuck_lags=lr.stuck_lags,
                             live_written_by_table=c["written_by_table"],
                             live_sink_failures=c["sink_failures"],
                             live_send_failures=c["send_failures"])
        if lr.rows.get("touchpoints") != events:
            raise BenchError(f"the live warehouse holds {lr.rows.get('touchpoints')} of "
                             f"{events:,} touchpoints")

        # replay() empties the rebuilt tables, starts generation 1 in the same home and
        # waits for two lag polls 1 s apart with every group at 0; bounded here, since a
        # live run that stalled will stall again.
        console.rule("C. journey replay (generation 1)")
        try:
            result = replay(live, console=console, timeout=REPLAY_TIMEOUT)
        except JourneyError as exc:
            report.checks["replay_error"] = str(exc)
        else:
            report.rates["replay"] = Rate(
                "replay", result.events, result.seconds,
                "ReplayReport.rate: from spawning the worker to the second of two lag polls "
                "(1 s apart) at 0; includes worker start")
            report.rows_replay = result.rows
            report.checks["rows_match"] = result.rows == lr.rows
        report.load["replay"] = loadavg()
    return report


def main(argv: list[str] | None = None) -> int:
    return bench_main(
        argv, __doc__, default_events=100_000, events_help="valid touchpoints to project",
        run=lambda args: run(args.events, args.seed, args.keep), print_report=print_report,
        results_dir="projection-run-",
        exit_code=lambda report: 0 if report.checks.get("rows_match") else 2)


if __name__ == "__main__":
    raise SystemExit(main())
