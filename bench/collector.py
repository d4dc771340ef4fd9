"""Collector benchmark: HTTP batches of 100 against a raw aiokafka producer, in one run.

Run from the repository root:

    .venv/bin/python bench/collector.py [--events N] [--concurrency C] [--json F]

Phases, one after another on one broker (no two measured things share the CPU):
A. raw aiokafka: one process sends the N events (acks=all, idempotent, keyed by
   customer) to a topic of its own and flushes: the ceiling for moving these bytes;
B. native: C concurrent HTTP clients post the same N events to `journey collector`
   (its own process) as JSON arrays of 100; the clock stops at the last 200 answer,
   which comes only after the broker acknowledged;
C. Segment: the same touchpoints as Segment calls (track with e-commerce spec names,
   page, identify), posted to /v1/batch 100 at a time;
D. latency: 100-event native batches sent open-loop at half of B's rate; p50/p99 from
   sending a request to its answer.
Every phase checks that the topic holds exactly what the answers said was accepted.
See bench/README.md and docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import asyncio
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

from bench.friction import percentile
from bench.projection import loadavg
from bench.throughput import (
    RESULTS,
    BenchError,
    Rate,
    bench_main,
    console,
    kafka_for,
    phase,
    topic_total,
    valid_messages,
)
from journey.settings import Settings

KAFKA_PORT, KAFKA_CONTROLLER_PORT, COLLECTOR_PORT = 53092, 53093, 56070
HOME = RESULTS / "collector-home"
BATCH = 100
TARGET = 0.50  # collector events/s as a share of the raw producer's
LATENCY_SECONDS = 15.0


@dataclass
class Report:
    events: int
    seed: int
    concurrency: int
    run_id: str
    started_at: str
    machine: dict[str, Any] = field(default_factory=dict)
    rates: dict[str, Rate] = field(default_factory=dict)
    latency: dict[str, Any] = field(default_factory=dict)
    checks: dict[str, Any] = field(default_factory=dict)
    load: dict[str, list[float]] = field(default_factory=dict)

    def rate(self, name: str) -> float:
        return self.rates[name].per_second

    def ratios(self) -> dict[str, float]:
        return {"native / raw producer": self.rate("native") / self.rate("raw"),
                "segment / native": self.rate("segment") / self.rate("native")}

    def as_json(self) -> dict[str, Any]:
        return {
            "command": " ".join(["python bench/collector.py", *sys.argv[1:]]),
            "events": self.events, "seed": self.seed, "concurrency": self.concurrency,
            "run_id": self.run_id, "started_at": self.started_at, "machine": self.machine,
            "rates": {k: {**asdict(r), "per_second": round(r.per_second, 1)}
                      for k, r in self.rates.items()},
            "ratios": {k: round(v, 4) for k, v in self.ratios().items()},
            "target": {"native / raw producer": TARGET},
            "latency": self.latency, "checks": self.checks, "load_average": self.load,
        }


def base_settings(run_id: str) -> Settings:
    prefix = f"bench-{run_id}"
    return Settings(home=HOME, app_id=prefix, kafka_port=KAFKA_PORT,
                    kafka_controller_port=KAFKA_CONTROLLER_PORT, collector_port=COLLECTOR_PORT,
                    collector_rate_limit=0.0, topic_dlq=f"{prefix}.dlq",
                    topic_ingest=f"{prefix}.ingest")


def phase_settings(base: Settings, name: str) -> Settings:
    return base.model_copy(update={"topic_ingest": f"{base.app_id}.{name}.ingest",
                                   "topic_dlq": f"{base.app_id}.{name}.dlq"})


# -- workload -----------------------------------------------------------------------------
def segment_call(tp: dict[str, Any]) -> dict[str, Any]:
    """A touchpoint as a Segment client would send it: e-commerce spec names where the spec
    has one, page and identify calls, else a track named after our type."""
    props = dict(tp.get("properties") or {})
    if tp.get("case_id"):
        props["case_id"] = tp["case_id"]
    call: dict[str, Any] = {"messageId": tp["event_id"], "timestamp": tp["occurred_at"],
                            "context": {"channel": tp["channel"],
                                        "library": {"name": "bench"}}}
    for ours, theirs in (("customer_id", "userId"), ("anonymous_id", "anonymousId")):
        if tp.get(ours):
            call[theirs] = tp[ours]
    spec = {"product_view": "Product Viewed", "add_to_cart": "Product Added",
            "checkout_started": "Checkout Started", "purchase": "Order Completed",
            "refund": "Order Refunded"}
    if tp["type"] == "page_view":
        return {**call, "type": "page", "properties": props}
    if tp["type"] == "identify":
        return {**call, "type": "identify", "traits": props.get("traits") or {}}
    if tp["type"] in spec:
        if tp["type"] == "checkout_started":
            props["value"] = props.pop("cart_value")
        if tp["type"] == "purchase" and "items" in props:
            props["products"] = props.pop("items")
        return {**call, "type": "track", "event": spec[tp["type"]], "properties": props}
    return {**call, "type": "track", "event": tp["type"], "properties": props}


@dataclass
class Workload:
    raw: list[tuple[bytes | None, bytes]]
    native: list[bytes]
    segment: list[bytes]
    latency: list[bytes]


def workload(events: int, seed: int) -> Workload:
    messages = valid_messages(events + events // 4, seed)
    raw, extra = messages[:events], messages[events:]

    def arrays(chunk: list[tuple[bytes | None, bytes]]) -> list[bytes]:
        return [b"[" + b",".join(v for _, v in chunk[i:i + BATCH]) + b"]"
                for i in range(0, len(chunk), BATCH)]

    now = datetime.now(UTC).isoformat()
    calls = [segment_call(orjson.loads(v)) for _, v in raw]
    segment = [orjson.dumps({"batch": calls[i:i + BATCH], "sentAt": now})
               for i in range(0, len(calls), BATCH)]
    return Workload(raw, arrays(raw), segment, arrays(extra))


# -- phases -------------------------------------------------------------------------------
async def raw_producer(settings: Settings, messages: list[tuple[bytes | None, bytes]]) -> Rate:
    from streams.kafka import create_topics, make_producer
    from streams.topics import topics

    await create_topics(settings.bootstrap, [topics(settings).ingest])
    producer = make_producer(settings.bootstrap, client_id="bench-raw")
    await producer.start()
    try:
        began = time.perf_counter()
        for key, value in messages:
            await producer.send(settings.topic_ingest, value, key=key)
        await producer.flush()
        seconds = time.perf_counter() - began
    finally:
        await producer.stop()
    got = await topic_total(settings.bootstrap, settings.topic_ingest)
    if got != len(messages):
        raise BenchError(f"raw producer: {got:,} records on the topic, {len(messages):,} sent")
    return Rate("raw aiokafka producer", len(messages), seconds,
                "one process, producer.send() per record then flush(), acks=all, idempotent")


@dataclass
class Posted:
    seconds: float
    accepted: int
    rejected: int
    latencies: list[float]


async def post_all(url: str, bodies: list[bytes], concurrency: int) -> Posted:
    """Post every body with `concurrency` clients; each answer must be a 200."""
    import aiohttp

    queue = list(reversed(bodies))
    tally = {"accepted": 0, "rejected": 0}
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def client() -> None:
            while queue:
                body = queue.pop()
                began = time.perf_counter()
                async with session.post(url, data=body,
                                        headers={"Content-Type": "application/json"}) as r:
                    answer = await r.read()
                    if r.status != 200:
                        raise BenchError(f"{url} answered {r.status}: {answer[:200]!r}")
                latencies.append(time.perf_counter() - began)
                got = orjson.loads(answer)
                tally["accepted"] += got["accepted"]
                tally["rejected"] += len(got["rejected"])

        began = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        seconds = time.perf_counter() - began
    return Posted(seconds, tally["accepted"], tally["rejected"], latencies)


async def paced(url: str, bodies: list[bytes], rate: float, seconds: float) -> dict[str, Any]:
    """Open loop: request i leaves at i / rate whatever the answers before it."""
    import aiohttp

    latencies: list[float] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one(body: bytes) -> None:
            began = time.perf_counter()
            async with session.post(url, data=body) as r:
                await r.read()
                if r.status != 200:
                    raise BenchError(f"{url} answered {r.status} during the latency phase")
            latencies.append(time.perf_counter() - began)

        tasks = []
        began = time.perf_counter()
        for i, body in enumerate(bodies):
            due = began + i / rate
            if due - time.perf_counter() > 0:
                await asyncio.sleep(due - time.perf_counter())
            if time.perf_counter() - began > seconds:
                break
            tasks.append(asyncio.create_task(one(body)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - began
    return {"requests_per_second_target": round(rate, 1), "requests": len(latencies),
            "achieved_per_second": round(len(latencies) / elapsed, 1),
            "events_per_request": BATCH,
            "p50_ms": round(1000 * percentile(latencies, 0.50), 1),
            "p99_ms": round(1000 * percentile(latencies, 0.99), 1),
            "max_ms": round(1000 * max(latencies), 1)}


def run(args: argparse.Namespace) -> Report:
    from journey.collector.run import CollectorProcess
    from journey.worker import settings_env

    run_id = datetime.now(UTC).strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:4]
    run_dir = RESULTS / f"collector-{run_id}"
    run_dir.mkdir(parents=True, exist_ok=True)
    base = base_settings(run_id)
    report = Report(args.events, args.seed, args.concurrency, run_id,
                    datetime.now(UTC).isoformat(timespec="seconds"))
    with phase("set-up: workload"):
        work = workload(args.events, args.seed)
    with kafka_for(base) as (_, machine):
        report.machine = machine
        raw = phase_settings(base, "raw")
        with phase("A. raw aiokafka producer"):
            report.rates["raw"] = asyncio.run(raw_producer(raw, work.raw))
        report.load["raw"] = loadavg()
        for name, path, bodies in (("native", "/v1/touchpoints", work.native),
                                   ("segment", "/v1/batch", work.segment)):
            settings = phase_settings(base, name).model_copy(
                update={"home": run_dir})
            proc = CollectorProcess(settings, settings_env(settings))
            with phase(f"{'B' if name == 'native' else 'C'}. {name} collector"):
                proc.start()
                try:
                    url = f"{proc.url}{path}"
                    asyncio.run(post_all(url, bodies[:5], 5))  # warm up the connections
                    warm = sum(len(orjson.loads(b)) if name == "native" else
                               len(orjson.loads(b)["batch"]) for b in bodies[:5])
                    posted = asyncio.run(post_all(url, bodies, args.concurrency))
                    report.load[name] = loadavg()
                    if name == "native":
                        rate = posted.accepted / posted.seconds
                        with phase("D. latency at half the sustainable rate"):
                            report.latency = asyncio.run(paced(
                                url, work.latency, rate / BATCH / 2, LATENCY_SECONDS))
                        report.load["latency"] = loadavg()
                finally:
                    proc.stop()
            stored = asyncio.run(topic_total(settings.bootstrap, settings.topic_ingest))
            expected = warm + posted.accepted + (
                report.latency["requests"] * BATCH if name == "native" else 0)
            report.checks[name] = {"accepted": posted.accepted, "rejected": posted.rejected,
                                   "ingest_records": stored, "expected_records": expected}
            if stored != expected or posted.accepted + posted.rejected != args.events:
                raise BenchError(f"{name}: {stored:,} records on {settings.topic_ingest}, "
                                 f"{expected:,} expected; answers {report.checks[name]}")
            report.rates[name] = Rate(
                f"{name} collector", posted.accepted, posted.seconds,
                f"{args.concurrency} clients, {BATCH} events a request, {path}")
    return report


def print_report(report: Report) -> None:
    table = Table(title=f"collector - {report.events:,} events, {report.concurrency} clients, "
                        f"run {report.run_id}")
    table.add_column("figure")
    table.add_column("events/s", justify="right")
    table.add_column("note")
    for rate in report.rates.values():
        table.add_row(rate.name, f"{rate.per_second:,.0f}", rate.note)
    for name, value in report.ratios().items():
        target = f" (target {TARGET:.0%})" if name.startswith("native") else ""
        table.add_row(name, f"{value:.1%}", target)
    console.print(table)
    lat = report.latency
    console.print(f"latency of a {BATCH}-event batch at {lat['requests_per_second_target']} "
                  f"requests/s (half of B): p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms, "
                  f"max {lat['max_ms']} ms over {lat['requests']} requests")
    console.print(f"load average: {report.load}; checks: {report.checks}")


def exit_code(report: Report) -> int:
    return 0 if report.ratios()["native / raw producer"] >= TARGET else 2


def more_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--concurrency", type=int, default=16,
                        help="concurrent HTTP clients in phases B and C (default 16)")


def main(argv: list[str] | None = None) -> int:
    return bench_main(argv, __doc__, default_events=100_000, events_help="events per phase",
                      run=run, print_report=print_report, results_dir="collector-",
                      exit_code=exit_code, more_arguments=more_arguments)


if __name__ == "__main__":
    sys.exit(main())
