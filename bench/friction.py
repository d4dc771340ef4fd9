"""Friction benchmark: the cost of detection, and the latency from touchpoint to friction.

Run from the repository root:

    .venv/bin/python bench/friction.py [--events N] [--seed S] [--latency-seconds S] [--json F]

Phases, one after another on one broker (no two measured things share the CPU):
set-up: pre-produce N valid touchpoints and validate them into `touchpoints` (not timed);
A. the journey projection and its sinks, friction detectors off;
B. the same with every friction rule on (plus the friction sink);
C. the friction detectors alone (no journeys, no sinks);
D. latency: touchpoints produced to a fresh ingest topic at half of C's rate for a
   while; for each friction whose triggering touchpoints were all produced in D, the
   time from producing the last of them to a read_committed consumer receiving the
   friction (validator + detector + transaction commit + fetch). Deadline rules
   (sla_breach, checkout_abandoned) fire on the watermark, not on a touchpoint, and are
   left out of the latency figures.
See bench/README.md and docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.projection import fill_store, loadavg, time_live
from bench.throughput import (
    RESULTS,
    BenchError,
    Rate,
    bench_main,
    bench_settings,
    console,
    kafka_for,
    phase,
    running_worker,
    valid_messages,
    worker_settings,
)
from journey.settings import Settings

KAFKA_PORT, KAFKA_CONTROLLER_PORT, WORKER_PORT = 52092, 52093, 57066
HOME = RESULTS / "friction-home"
DEADLINE_RULES = frozenset({"sla_breach", "checkout_abandoned"})


@dataclass
class Report:
    events: int
    seed: int
    run_id: str
    started_at: str
    machine: dict[str, Any] = field(default_factory=dict)
    rates: dict[str, Rate] = field(default_factory=dict)
    latency: dict[str, Any] = field(default_factory=dict)
    friction: dict[str, int] = field(default_factory=dict)
    load: dict[str, list[float]] = field(default_factory=dict)
    checks: dict[str, Any] = field(default_factory=dict)

    def rate(self, key: str) -> float:
        return self.rates[key].per_second if key in self.rates else float("nan")

    def ratios(self) -> dict[str, float]:
        return {
            "journeys + friction / journeys alone (cost of detection)":
                self.rate("with_friction") / self.rate("journeys"),
            "friction detectors alone / journeys alone": self.rate("friction") /
                self.rate("journeys"),
        }

    def as_json(self) -> dict[str, Any]:
        return {
            "command": " ".join(["python bench/friction.py", *sys.argv[1:]]),
            "events": self.events, "seed": self.seed, "run_id": self.run_id,
            "started_at": self.started_at, "machine": self.machine,
            "rates": {k: {**asdict(r), "per_second": round(r.per_second, 1)}
                      for k, r in self.rates.items()},
            "ratios": {k: round(v, 4) for k, v in self.ratios().items()},
            "latency": self.latency, "friction_by_rule": self.friction,
            "load_average": self.load, "checks": self.checks,
        }


def friction_settings(run_id: str) -> Settings:
    return bench_settings(f"fric-{run_id}").model_copy(update={
        "home": HOME, "kafka_port": KAFKA_PORT, "kafka_controller_port": KAFKA_CONTROLLER_PORT,
        "worker_port": WORKER_PORT})


def timed_phase(report: Report, key: str, title: str, settings: Settings, events: int) -> None:
    with phase(title) as progress:
        lr = time_live(settings, events, progress)
    if lr.stuck_lags is not None:
        raise BenchError(f"{title}: the worker did not catch up (lags {lr.stuck_lags})")
    report.rates[key] = Rate(title, events, lr.end_at - lr.first_at,
                             "first /status poll with progress to the first lag poll with "
                             "every consumer group of the worker at 0")
    report.load[key] = loadavg()
    if settings.friction_enabled:
        report.friction = dict(lr.counters.get("friction", {}))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def paced_latency(settings: Settings, messages: list[tuple[bytes | None, bytes]],
                        rate: float, seconds: float) -> dict[str, Any]:
    """Produce at `rate` for up to `seconds`; time each friction back to its touchpoints."""
    from streams.kafka import make_consumer, make_producer

    produced_at: dict[str, float] = {}
    received: list[tuple[float, dict[str, Any]]] = []
    stop = asyncio.Event()

    consumer = make_consumer(settings.bootstrap, settings.topic_friction, group_id=None,
                             fetch_max_wait_ms=20)
    await consumer.start()

    async def listen() -> None:
        while not stop.is_set():
            got = await consumer.getmany(timeout_ms=100)
            now = time.perf_counter()
            for records in got.values():
                received.extend((now, orjson.loads(r.value)) for r in records)

    listener = asyncio.create_task(listen())
    producer = make_producer(settings.bootstrap, linger_ms=1)
    await producer.start()
    sent = 0
    try:
        began = time.perf_counter()
        tick = 0.01
        for i, (key, value) in enumerate(messages):
            due = began + i / rate
            if due - time.perf_counter() > tick:
                await asyncio.sleep(due - time.perf_counter())
            if time.perf_counter() - began > seconds:
                break
            produced_at[orjson.loads(value)["event_id"]] = time.perf_counter()
            await producer.send(settings.topic_ingest, value=value, key=key)
            sent += 1
        await producer.flush()
        production = time.perf_counter() - began
        await asyncio.sleep(5.0)  # the last batches through validator and detector
    finally:
        stop.set()
        await listener
        await consumer.stop()
        await producer.stop()
    latencies: list[float] = []
    skipped_deadline = 0
    for at, event in received:
        if event["rule"] in DEADLINE_RULES:
            skipped_deadline += 1
            continue
        times = [produced_at.get(e) for e in event["evidence"]]
        if None in times:
            continue
        latencies.append(at - max(t for t in times if t is not None))
    if not latencies:
        raise BenchError("no friction with all of its touchpoints produced in phase D")
    return {
        "rate_target": round(rate, 1), "produced": sent,
        "rate_achieved": round(sent / production, 1), "friction_received": len(received),
        "timed": len(latencies), "deadline_rules_left_out": skipped_deadline,
        "p50_ms": round(1000 * percentile(latencies, 0.50), 1),
        "p99_ms": round(1000 * percentile(latencies, 0.99), 1),
        "mean_ms": round(1000 * statistics.fmean(latencies), 1),
        "max_ms": round(1000 * max(latencies), 1),
    }


def print_report(report: Report) -> None:
    table = Table(title=f"friction detection - {report.events:,} touchpoints, seed "
                        f"{report.seed}, run {report.run_id}")
    for column in ("phase", "events", "seconds", "events/s"):
        table.add_column(column, justify="left" if column == "phase" else "right")
    for rate in report.rates.values():
        table.add_row(rate.name, f"{rate.count:,}", f"{rate.seconds:.2f}",
                      f"{rate.per_second:,.0f}")
    console.print(table)
    for name, value in report.ratios().items():
        console.print(f"  {name}: [bold]{value:.1%}[/bold]")
    for share, lat in report.latency.items():
        console.print(
            f"latency at {lat['rate_achieved']:,.0f} events/s (target {lat['rate_target']:,.0f}, "
            f"{share} of C): p50 [bold]{lat['p50_ms']:.0f} ms[/bold], p99 "
            f"[bold]{lat['p99_ms']:.0f} ms[/bold] (mean {lat['mean_ms']:.0f}, max "
            f"{lat['max_ms']:.0f}) over {lat['timed']:,} friction events")
    console.print("friction by rule (phase B): " + ", ".join(
        f"{k}={v:,}" for k, v in sorted(report.friction.items())))
    m = report.machine
    console.print(f"machine: {m['cores']} cores ({m['cpu']}), Python {m['python']}, "
                  f"Kafka {m['kafka']}; load " + ", ".join(
                      f"after {k} {v}" for k, v in report.load.items()))


def run(events: int, seed: int, latency_seconds: float, keep: bool) -> Report:
    from streams.app import prepare_topics

    run_id = datetime.now(UTC).strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:4]
    run_dir = RESULTS / f"friction-run-{run_id}"
    run_dir.mkdir(parents=True, exist_ok=True)
    base = friction_settings(run_id)
    report = Report(events, seed, run_id, datetime.now(UTC).isoformat(timespec="seconds"))

    def drop_heavy() -> None:
        if not keep:
            for role in ("validator", "journeys", "with-friction", "friction", "latency"):
                shutil.rmtree(run_dir / role, ignore_errors=True)

    with kafka_for(base, on_exit=drop_heavy) as (_, report.machine):
        with console.status(f"generating {events:,} valid touchpoints (seed {seed})..."):
            messages = valid_messages(events, seed)
        report.checks.update(fill_store(base, run_dir, messages))
        del messages

        idle = f"{base.app_id}.idle.ingest"  # the validators of A-C idle
        plain = worker_settings(base, run_dir, "journeys", app_id=f"{base.app_id}-a",
                                topic_ingest=idle, friction_enabled=False)
        timed_phase(report, "journeys", "A. journeys + sinks, friction off", plain, events)
        both = worker_settings(base, run_dir, "with-friction", app_id=f"{base.app_id}-b",
                               topic_ingest=idle)
        timed_phase(report, "with_friction", "B. journeys + sinks + every friction rule",
                    both, events)
        alone = worker_settings(base, run_dir, "friction", app_id=f"{base.app_id}-c",
                                topic_ingest=idle, journeys_enabled=False, sink_enabled=False)
        timed_phase(report, "friction", "C. friction detectors alone", alone, events)

        # D: a fresh ingest/touchpoints/friction, validator + detectors only, paced.
        lat = worker_settings(
            base, run_dir, "latency", app_id=f"{base.app_id}-d",
            topic_ingest=f"{base.app_id}.d.ingest", topic_touchpoints=f"{base.app_id}.d.tp",
            topic_friction=f"{base.app_id}.d.friction", journeys_enabled=False,
            sink_enabled=False)
        asyncio.run(prepare_topics(lat))
        # Half of C's rate, as asked; a quarter shows how much of that is queueing.
        rate = report.rate("friction") / 2
        paced = valid_messages(int(rate * latency_seconds) + 1000, seed + 1)
        with running_worker(lat):
            time.sleep(5.0)  # groups joined, state restored: not part of the latency
            for share, key in ((2, "half"), (4, "quarter")):
                rate = report.rate("friction") / share
                console.rule(f"D. latency at {rate:,.0f} events/s for {latency_seconds:.0f}s")
                # fresh event ids per round: the validator would drop repeats
                chunk = paced if share == 2 else valid_messages(
                    int(rate * latency_seconds) + 1000, seed + 2)
                report.latency[key] = asyncio.run(
                    paced_latency(lat, chunk, rate, latency_seconds))
                time.sleep(5.0)
        report.load["latency"] = loadavg()
    return report


def main(argv: list[str] | None = None) -> int:
    def latency_seconds(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--latency-seconds", type=float, default=30.0,
                            help="how long each latency round produces (default 30)")

    return bench_main(
        argv, __doc__, default_events=100_000, events_help="valid touchpoints to detect over",
        run=lambda args: run(args.events, args.seed, args.latency_seconds, args.keep),
        print_report=print_report, results_dir="friction-run-", exit_code=lambda _: 0,
        more_arguments=latency_seconds)


if __name__ == "__main__":
    raise SystemExit(main())
