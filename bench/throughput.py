"""Throughput benchmark: validator and sink against raw aiokafka and raw insert baselines.

Run from the repository root:

    .venv/bin/python bench/throughput.py [--events N] [--seed S] [--json out.json]

One run, one machine, phases strictly one after another so that no two measured
things share the CPU: pre-produce -> raw aiokafka loop -> validator -> sink -> raw
inserts. See docs/PERFORMANCE.md for what each figure means.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import platform
import shutil
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

import orjson
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

# Light modules; the heavy clients (faust, aiokafka, chDB) are imported where used, so
# that --help answers at once.
from journey.settings import Settings
from journey.worker import WorkerProcess, worker_status

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
# Ports apart from the defaults (19092/6066) and the integration tests' (39092/36066).
KAFKA_PORT, KAFKA_CONTROLLER_PORT, WORKER_PORT = 49092, 49093, 46066
VALIDATOR_TARGET = 0.30  # validator events/s as a share of the raw aiokafka loop
SINK_TARGET = 0.50  # sink rows/s as a share of raw inserts
POLL_SECONDS = 0.2
SINK_POLL_SECONDS = 0.1
MIN_EVENTS = 50_000
RAW_INSERT_REPEATS = 3  # the inserts take ~2 s a pass: one pass is at the mercy of noise
STALL_SECONDS = 90.0  # no progress for this long means something is broken, not slow
EVENTS_PER_CUSTOMER = 15.0  # the generator makes ~15.6 valid events per customer

console = Console()


class BenchError(Exception):
    """A phase could not be measured (a stall, a crash, a count that does not add up)."""


@dataclass
class Rate:
    """One measured figure: `count` items in `seconds`."""

    name: str
    count: int
    seconds: float
    note: str = ""

    @property
    def per_second(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else math.nan


@dataclass
class Report:
    events: int
    seed: int
    run_id: str
    started_at: str
    machine: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)  # the knobs that move the figures
    rates: dict[str, Rate] = field(default_factory=dict)
    checks: dict[str, Any] = field(default_factory=dict)

    def rate(self, key: str) -> float:
        return self.rates[key].per_second if key in self.rates else math.nan

    def ratios(self) -> dict[str, tuple[float, float]]:
        """name -> (measured share, target share)."""
        return {
            "validator / raw loop": (self.rate("validator") / self.rate("raw_loop"),
                                     VALIDATOR_TARGET),
            "sink / raw inserts": (self.rate("sink") / self.rate("raw_insert"), SINK_TARGET),
        }

    def as_json(self) -> dict[str, Any]:
        return {
            "command": " ".join(["python bench/throughput.py", *sys.argv[1:]]),
            "events": self.events,
            "seed": self.seed,
            "run_id": self.run_id,
            "started_at": self.started_at,
            "machine": self.machine,
            "settings": self.settings,
            "rates": {k: {**asdict(r), "per_second": round(r.per_second, 1)}
                      for k, r in self.rates.items()},
            "ratios": {k: {"measured": round(m, 4), "target": t, "pass": m >= t}
                       for k, (m, t) in self.ratios().items()},
            "checks": self.checks,
        }


# -- settings ---------------------------------------------------------------------------
def bench_settings(run_id: str) -> Settings:
    """The broker's settings: a home of its own, and topic names no earlier run used."""
    prefix = f"bench-{run_id}"
    return Settings(
        home=RESULTS / "home",
        app_id=prefix,
        topic_ingest=f"{prefix}.touchpoints.ingest",
        topic_touchpoints=f"{prefix}.touchpoints",
        topic_dlq=f"{prefix}.touchpoints.dlq",
        topic_friction=f"{prefix}.friction",
        kafka_port=KAFKA_PORT,
        kafka_controller_port=KAFKA_CONTROLLER_PORT,
        worker_port=WORKER_PORT,
    )


def worker_settings(base: Settings, run_dir: Path, role: str, **update: Any) -> Settings:
    """A worker's settings: the shared broker and topics, its own home and warehouse."""
    home = (run_dir / role).resolve()
    return base.model_copy(update={"home": home, "clickhouse_dsn": f"chdb://{home}/warehouse",
                                   **update})


def child_env(settings: Settings) -> dict[str, str]:
    from journey.worker import settings_env

    return settings_env(settings)


# -- workload ---------------------------------------------------------------------------
def valid_messages(events: int, seed: int) -> list[tuple[bytes | None, bytes]]:
    """Exactly `events` valid, non-duplicate (key, value) pairs from the workload generator."""
    from journey.workload import generate

    # The validator rejects events more than 24 h in the future: the generator's window
    # must end about now.
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=30)
    customers = max(1, math.ceil(events / EVENTS_PER_CUSTOMER) + 20)
    while True:
        workload = generate(customers, seed, start=start, bad_ratio=0.0, duplicate_ratio=0.0)
        chosen = [(m.key, m.value) for m in workload.messages
                  if m.reason is None and not m.duplicate]
        if len(chosen) >= events:
            return chosen[:events]
        customers = math.ceil(customers * events / max(1, len(chosen)) * 1.05)


async def produce(settings: Settings, messages: list[tuple[bytes | None, bytes]],
                  progress: Progress) -> float:
    from journey.sdk import TouchpointProducer

    task = progress.add_task("pre-produce to ingest", total=len(messages))
    began = time.perf_counter()
    async with TouchpointProducer(settings) as producer:
        for i, (key, value) in enumerate(messages, 1):
            # Raw: these bytes came out of the generator valid; validating them here
            # would only slow the set-up, which is not what is being measured.
            await producer.send_raw(value, key=key)
            if i % 5000 == 0:
                progress.update(task, completed=i)
        await producer.flush()
    progress.update(task, completed=len(messages))
    return time.perf_counter() - began


async def create_scratch_topic(settings: Settings, name: str) -> None:
    from streams.kafka import create_topics
    from streams.topics import TopicSpec

    await create_topics(settings.bootstrap, [
        TopicSpec(name, "as ingest", "as ingest", settings.topic_partitions)])


# -- baseline A: raw aiokafka consume -> produce --------------------------------------------
async def raw_loop(settings: Settings, scratch: str, total: int, progress: Progress) -> Rate:
    """Consume ingest from offset 0, produce each record as-is, flush, commit, per batch."""
    from streams.kafka import make_consumer, make_producer

    batch_size = settings.validator_batch_size  # the validator's flush granularity
    consumer = make_consumer(settings.bootstrap, settings.topic_ingest,
                             group_id=f"{settings.app_id}-raw-loop",
                             max_poll_records=batch_size)
    producer = make_producer(settings.bootstrap, client_id="bench-raw-loop")
    await consumer.start()
    await producer.start()
    task = progress.add_task("raw aiokafka loop", total=total)
    done = 0
    first: float | None = None
    try:
        deadline = time.monotonic() + STALL_SECONDS
        while done < total:
            got = await consumer.getmany(timeout_ms=500, max_records=batch_size)
            if not got:
                if time.monotonic() > deadline:
                    raise BenchError(f"raw loop stalled at {done:,} of {total:,} records")
                continue
            if first is None:
                first = time.perf_counter()
            futures = []
            for messages in got.values():
                for m in messages:
                    futures.append(await producer.send(scratch, m.value, key=m.key))
                done += len(messages)
            # Same guarantee as the validator: on the broker (acks=all) before the commit.
            await producer.flush()
            await asyncio.gather(*futures)
            await consumer.commit()
            progress.update(task, completed=done)
            deadline = time.monotonic() + STALL_SECONDS
        end = time.perf_counter()
    finally:
        await producer.stop()
        await consumer.stop()
    assert first is not None
    return Rate("raw aiokafka loop", done, end - first,
                f"batches of {batch_size}, flush + commit per batch")


# -- the engine: a worker child process ------------------------------------------------------
@dataclass
class Watched:
    spawned: float  # perf_counter when the child was started
    ready: float  # /health answered with the warehouse open
    first_at: float  # first poll that saw the counter above zero
    first_value: int  # the counter at that poll (work already done before it)
    end_at: float  # first poll that saw the counter reach the total
    counters: dict[str, Any]


@contextlib.contextmanager
def running_worker(settings: Settings) -> Iterator[tuple[WorkerProcess, float, float]]:
    """A worker child for the block; (process, spawned, ready) times; always stopped."""
    if worker_status(settings, timeout=0.5) is not None:
        raise BenchError(f"a worker already answers at {settings.worker_url}: stop it first")
    worker = WorkerProcess(settings, env=child_env(settings))
    spawned = time.perf_counter()
    try:
        worker.start()
        yield worker, spawned, time.perf_counter()
    finally:
        worker.stop()


def watch(settings: Settings, worker: WorkerProcess, spawned: float, ready: float,
          counter: str, total: int, label: str, progress: Progress,
          poll: float = POLL_SECONDS) -> Watched:
    """Poll the worker's /status until `counter` reaches `total`."""
    task = progress.add_task(label, total=total)
    first_at: float | None = None
    first_value = 0
    last_value, last_change = -1, time.perf_counter()
    while True:
        status = worker_status(settings, timeout=2.0)
        now = time.perf_counter()
        if status is None:
            if worker.proc.poll() is not None:
                raise BenchError(f"the worker exited during '{label}': see {worker.log_path}")
        else:
            counters = status["counters"]
            value = int(counters[counter])
            if value > 0 and first_at is None:
                first_at, first_value = now, value
            if value != last_value:
                last_value, last_change = value, now
            progress.update(task, completed=value)
            if value >= total:
                assert first_at is not None
                return Watched(spawned, ready, first_at, first_value, now, counters)
        if now - last_change > STALL_SECONDS:
            raise BenchError(f"'{label}' made no progress for {STALL_SECONDS:.0f}s at "
                             f"{counter}={last_value:,} of {total:,}: see {worker.log_path}")
        time.sleep(poll)


def steady_rate(name: str, w: Watched, total: int, what: str) -> Rate:
    # The counter grows in whole batches, so the first poll that sees it above zero
    # already counts a batch or more: rate the rest over the time that remained.
    count, seconds = total - w.first_value, w.end_at - w.first_at
    if seconds <= 0:
        raise BenchError(f"{name} finished within one poll: raise --events to time it")
    return Rate(name, count, seconds,
                f"{what} from first poll with progress ({w.first_value:,} done) to the last")


async def topic_total(bootstrap: str, topic: str) -> int:
    """Records on a topic, read to its end: the stages write in transactions, so the end
    offsets also count the commit markers. Raises if an event id is there twice."""
    from streams.kafka import make_consumer

    # Subscribed, so that the client fetches this topic's metadata.
    consumer = make_consumer(bootstrap, topic, group_id=None)
    await consumer.start()
    try:
        # The partition handle type only; the client itself comes from the wrapper.
        from aiokafka import TopicPartition

        deadline = time.monotonic() + 30
        while not (parts := consumer.partitions_for_topic(topic)):
            if time.monotonic() > deadline:
                raise BenchError(f"no metadata for topic {topic}")
            await asyncio.sleep(0.05)
        tps = [TopicPartition(topic, p) for p in parts]
        ends = await consumer.end_offsets(tps)
        ids: set[str] = set()
        records = 0
        deadline = time.monotonic() + STALL_SECONDS
        while any([await consumer.position(tp) < ends[tp] for tp in tps]):
            got = await consumer.getmany(timeout_ms=500, max_records=10_000)
            for messages in got.values():
                records += len(messages)
                ids.update(orjson.loads(m.value)["event_id"] for m in messages)
            if got:
                deadline = time.monotonic() + STALL_SECONDS
            elif time.monotonic() > deadline:
                raise BenchError(f"reading {topic} stalled after {records:,} records")
        if len(ids) != records:
            raise BenchError(f"{topic} holds {records - len(ids):,} event ids twice")
        return records
    finally:
        await consumer.stop()


async def read_topic(bootstrap: str, topic: str, total: int) -> list[dict[str, Any]]:
    """Every record of a topic from offset 0, decoded: the rows the sink received."""
    from streams.kafka import make_consumer

    consumer = make_consumer(bootstrap, topic, group_id=None)
    await consumer.start()
    rows: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + STALL_SECONDS
        while len(rows) < total:
            got = await consumer.getmany(timeout_ms=500)
            for messages in got.values():
                rows.extend(orjson.loads(m.value) for m in messages)
            if got:
                deadline = time.monotonic() + STALL_SECONDS
            elif time.monotonic() > deadline:
                raise BenchError(f"read only {len(rows):,} of {total:,} rows from {topic}")
    finally:
        await consumer.stop()
    return rows


# -- baseline B: raw inserts into a warehouse of the bench's own ------------------------------
def raw_inserts(folder: Path, rows: list[dict[str, Any]], batch_size: int,
                progress: Progress, repeats: int = RAW_INSERT_REPEATS) -> tuple[Rate, Rate, int]:
    """Median of `repeats` timed passes each, every pass into an emptied table."""
    from projections.clickhouse.builders.trends import touchpoint_total_query
    from projections.clickhouse.client import connect
    from projections.clickhouse.runner import Runner
    from projections.clickhouse.tables import TOUCHPOINT_INSERT_COLUMNS, TOUCHPOINTS, migrate
    from projections.clickhouse.writer import insert_touchpoints, touchpoint_columns

    names = [n for n, _ in TOUCHPOINT_INSERT_COLUMNS]
    types = [t for _, t in TOUCHPOINT_INSERT_COLUMNS]
    batches = [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]
    # chDB hosts one folder per process: this one is opened once, here, and only after
    # the sink's worker (which owns another folder) has stopped.
    warehouse = connect(f"chdb://{folder.resolve()}")
    try:
        migrate(warehouse)
        columns = [list(touchpoint_columns(b).values()) for b in batches]

        def insert_block(block: list[list[Any]]) -> None:
            warehouse.insert(TOUCHPOINTS, block, names, column_types=types)

        def insert_batch(batch: list[dict[str, Any]]) -> None:
            insert_touchpoints(warehouse, batch)

        def timed_passes(label: str, work: Callable[[Any], None], items: list[Any]) -> list[float]:
            # Each pass starts from an empty table: background merges of an earlier
            # pass's parts would otherwise slow the next one down.
            passes = []
            task = progress.add_task(label, total=repeats * len(rows))
            for r in range(repeats):
                warehouse.command(f"TRUNCATE TABLE {TOUCHPOINTS}")
                seconds = 0.0
                for done, item in enumerate(items, 1):
                    began = time.perf_counter()
                    work(item)
                    seconds += time.perf_counter() - began
                    progress.update(task, completed=r * len(rows)
                                    + min(done * batch_size, len(rows)))
                passes.append(seconds)
            return passes

        only = timed_passes("raw inserts (pre-built)", insert_block, columns)
        stored = int(Runner(warehouse=warehouse).run(touchpoint_total_query()).rows[0][0])
        convert = timed_passes("raw inserts (+convert)", insert_batch, batches)
    finally:
        warehouse.close()

    def spread(passes: list[float]) -> str:
        rates = sorted(f"{len(rows) / s:,.0f}" for s in passes)
        return f"median of {repeats} passes ({' / '.join(rates)} rows/s)"

    insert_only = Rate("raw inserts", len(rows), statistics.median(only),
                       f"Warehouse.insert only, batches of {batch_size}, columns pre-built; "
                       f"{spread(only)}")
    with_convert = Rate("raw inserts incl. dict->columns", len(rows),
                        statistics.median(convert),
                        f"insert_touchpoints() (touchpoint_columns + Warehouse.insert); "
                        f"{spread(convert)}")
    return insert_only, with_convert, stored


# -- facts and output ---------------------------------------------------------------------------
def machine_facts(kafka_version: str | None) -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.partition(":")[2].strip()
                break
    versions = {}
    for dist in ("faust-streaming", "aiokafka", "chdb", "clickhouse-connect", "orjson"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "kafka": kafka_version,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "versions": versions,
    }


def print_report(report: Report) -> None:
    table = Table(title=f"throughput - {report.events:,} events, seed {report.seed}, "
                        f"run {report.run_id}")
    table.add_column("figure")
    table.add_column("items", justify="right")
    table.add_column("seconds", justify="right")
    table.add_column("per second", justify="right")
    for rate in report.rates.values():
        table.add_row(rate.name, f"{rate.count:,}", f"{rate.seconds:.2f}",
                      f"{rate.per_second:,.0f}")
    console.print(table)
    for rate in report.rates.values():
        console.print(f"  [bold]{rate.name}[/bold]: {rate.note}")

    ratios = Table(title="against the targets")
    for column in ("ratio", "measured", "target", "verdict"):
        ratios.add_column(column, justify="left" if column == "ratio" else "right")
    for name, (measured, target) in report.ratios().items():
        verdict = "[green]PASS[/green]" if measured >= target else "[red]MISS[/red]"
        ratios.add_row(name, f"{measured:.1%}", f"{target:.0%}", verdict)
    console.print(ratios)
    convert = report.rate("sink") / report.rate("raw_insert_convert")
    console.print(f"for reference, not a target: sink / raw inserts incl. dict->columns = "
                  f"{convert:.1%}")
    for name, (measured, target) in report.ratios().items():
        if not measured >= target:
            console.print(f"[red bold]MISSED:[/red bold] {name} is {measured:.1%}, below the "
                          f"{target:.0%} target.")

    m = report.machine
    console.print(f"machine: {m['cores']} cores ({m['cpu']}), Python {m['python']}, "
                  f"Kafka {m['kafka']}, load average {m['load_average_at_start']} at start, "
                  f"{m.get('load_average_at_end')} at end")
    console.print("settings: " + ", ".join(f"{k}={v}" for k, v in report.settings.items()))
    console.print("checks: " + ", ".join(f"{k}={v}" for k, v in report.checks.items()))


# -- the run --------------------------------------------------------------------------------
def phase(title: str) -> Progress:
    console.rule(title)
    return Progress(TextColumn("{task.description:<26}"), BarColumn(), MofNCompleteColumn(),
                    TaskProgressColumn(), TimeElapsedColumn(), console=console,
                    refresh_per_second=4)  # the bench shares 2 cores with what it measures


@contextlib.contextmanager
def kafka_for(base: Settings, *, on_exit: Callable[[], None] | None = None,
              ) -> Iterator[tuple[str, dict[str, Any]]]:
    """The benchmark's broker for the block: (bootstrap, machine facts). At the end, even
    on failure, the facts get the load average, `on_exit` runs (cleaning up the run), and
    a broker this run started is stopped and its data deleted (the jars stay); one that
    was already running is left running."""
    from journey.stack import KafkaStack, ensure_kafka

    stack = KafkaStack(base)
    ours = base.uses_local_stack and not stack.status().running
    with console.status(f"Kafka on {base.bootstrap} ({'starting' if ours else 'reusing'})..."):
        bootstrap = ensure_kafka(base)
    record = stack.status().record
    machine = machine_facts(record.version if record else None)
    try:
        yield bootstrap, machine
    finally:
        machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        if on_exit is not None:
            on_exit()
        if ours:
            with console.status("stopping Kafka and deleting its data (jars stay)..."):
                # Data only: every run uses fresh topic names, so nothing is reused.
                stack.reset()
        else:
            console.print(f"Kafka at {base.bootstrap} was already running: left running; "
                          f"this run's topics start with {base.app_id}.")


class BenchReport(Protocol):
    run_id: str

    def as_json(self) -> dict[str, Any]: ...


def bench_main(argv: list[str] | None, doc: str | None, *, default_events: int,
               events_help: str, run: Callable[[argparse.Namespace], BenchReport],
               print_report: Callable[[Any], None], results_dir: str,
               exit_code: Callable[[Any], int],
               more_arguments: Callable[[argparse.ArgumentParser], None] | None = None) -> int:
    """The command line every benchmark shares: parse, run, print, keep results.json next
    to the run's logs (and a copy at --json), exit with exit_code(report); 1 on failure."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    parser.add_argument("--events", type=int, default=default_events,
                        help=f"{events_help} (default {default_events})")
    parser.add_argument("--seed", type=int, default=7, help="workload generator seed")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--keep", action="store_true",
                        help="keep the run's warehouses and Faust data under bench/results/")
    if more_arguments is not None:
        more_arguments(parser)
    args = parser.parse_args(argv)
    if args.events < MIN_EVENTS:
        # Below this the phases finish within a poll or two and there is nothing to time.
        parser.error(f"--events must be at least {MIN_EVENTS:,}")
    from journey.errors import JourneyError

    try:
        report = run(args)
    except (BenchError, JourneyError) as exc:
        console.print(f"[red]benchmark failed:[/red] {exc}")
        return 1
    print_report(report)
    data = orjson.dumps(report.as_json(), option=orjson.OPT_INDENT_2)
    (RESULTS / f"{results_dir}{report.run_id}" / "results.json").write_bytes(data)
    if args.json:
        args.json.write_bytes(data)
        console.print(f"results written to {args.json}")
    return exit_code(report)


def run(events: int, seed: int, keep: bool) -> Report:
    run_id = datetime.now(UTC).strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:4]
    run_dir = RESULTS / f"run-{run_id}"
    run_dir.mkdir(parents=True, exist_ok=True)
    base = bench_settings(run_id)
    report = Report(events, seed, run_id, datetime.now(UTC).isoformat(timespec="seconds"))
    report.settings = {name: getattr(base, name) for name in (
        "topic_partitions", "validator_batch_size", "sink_batch_size", "sink_batch_seconds")}

    def drop_heavy() -> None:
        if not keep:
            for heavy in ("validator/warehouse", "validator/worker", "sink/warehouse",
                          "sink/worker", "raw-warehouse"):
                shutil.rmtree(run_dir / heavy, ignore_errors=True)

    with kafka_for(base, on_exit=drop_heavy) as (bootstrap, report.machine):
        with console.status(f"generating {events:,} valid touchpoints (seed {seed})..."):
            messages = valid_messages(events, seed)
        from streams.app import prepare_topics

        scratch = f"{base.app_id}.raw-loop"
        asyncio.run(prepare_topics(base))
        asyncio.run(create_scratch_topic(base, scratch))
        with phase("set-up (not measured)") as progress:
            seconds = asyncio.run(produce(base, messages, progress))
        report.checks["pre_produce_seconds"] = round(seconds, 1)
        del messages

        with phase("A. raw aiokafka consume -> produce") as progress:
            report.rates["raw_loop"] = asyncio.run(raw_loop(base, scratch, events, progress))

        # Each phase runs only the part it times: the journey projection would compete
        # for the same two cores (it is measured on its own elsewhere).
        validator = worker_settings(base, run_dir, "validator", sink_enabled=False,
                                    journeys_enabled=False, friction_enabled=False)
        # The validator and the dedup stage together: from the ingest topic to the event
        # store, each touchpoint validated, re-keyed, deduplicated, stored once.
        with phase("validator + dedup worker (sink off)") as progress, \
                running_worker(validator) as (worker, spawned, ready):
            w = watch(validator, worker, spawned, ready, "valid", events,
                      "validator + dedup: stored", progress)
        report.rates["validator"] = steady_rate("validator + dedup", w, events, "events")
        report.rates["validator_cold"] = Rate(
            "validator incl. worker start", events, w.end_at - w.spawned,
            f"from spawning the worker (ready after {w.ready - w.spawned:.1f}s)")
        c = w.counters
        report.checks.update(validator_valid=c["valid"], validator_invalid=c["invalid"],
                             validator_duplicates=c["duplicates"])
        stored = asyncio.run(topic_total(bootstrap, base.topic_touchpoints))
        report.checks["touchpoints_on_topic"] = stored
        if c["valid"] != events or stored != events:
            raise BenchError(f"the validator passed {c['valid']:,} and the topic holds "
                             f"{stored:,} of {events:,} events: see {worker.log_path}")

        # The sink's worker gets an ingest topic nobody writes and an app id (so Faust
        # groups and table changelogs) of its own: its validator idles and restores no
        # 200k-entry dedup table while the sink is being timed.
        sink = worker_settings(base, run_dir, "sink", app_id=f"{base.app_id}-sink",
                               topic_ingest=f"{base.app_id}.idle.ingest",
                               journeys_enabled=False, friction_enabled=False)
        with phase("sink worker (validator idle)") as progress, \
                running_worker(sink) as (worker, spawned, ready):
            # The sink is done in a few seconds: a finer poll keeps the timing error small.
            w = watch(sink, worker, spawned, ready, "written", events, "sink: written",
                      progress, poll=SINK_POLL_SECONDS)
            from projections.clickhouse.builders.trends import touchpoint_total_query
            from projections.clickhouse.runner import Runner

            _, rows = Runner.for_settings(sink).run(touchpoint_total_query())
        report.rates["sink"] = steady_rate("sink", w, events, "rows")
        report.rates["sink_cold"] = Rate(
            "sink incl. worker start", events, w.end_at - w.spawned,
            f"from spawning the worker (ready after {w.ready - w.spawned:.1f}s)")
        report.checks.update(sink_batches=w.counters["sink_batches"],
                             sink_failures=w.counters["sink_failures"],
                             sink_rows_stored=int(rows[0][0]))
        if int(rows[0][0]) != events:
            raise BenchError(f"the sink's warehouse holds {rows[0][0]:,} of {events:,} rows")

        with console.status("reading the touchpoints topic back (not measured)..."):
            rows_in = asyncio.run(read_topic(bootstrap, base.topic_touchpoints, events))
        with phase("B. raw inserts into the bench's own chDB") as progress:
            insert_only, with_convert, stored_raw = raw_inserts(
                run_dir / "raw-warehouse", rows_in, base.sink_batch_size, progress)
        report.rates["raw_insert"] = insert_only
        report.rates["raw_insert_convert"] = with_convert
        report.checks["raw_rows_stored"] = stored_raw
        if stored_raw != events:
            raise BenchError(f"raw inserts stored {stored_raw:,} of {events:,} rows")
    return report


def main(argv: list[str] | None = None) -> int:
    return bench_main(
        argv, __doc__, default_events=200_000, events_help="valid touchpoints to push through",
        run=lambda args: run(args.events, args.seed, args.keep), print_report=print_report,
        results_dir="run-",
        exit_code=lambda report: 0 if all(m >= t for m, t in report.ratios().values()) else 2)


if __name__ == "__main__":
    raise SystemExit(main())

