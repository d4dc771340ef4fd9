"""The alert consumer on the real broker, delivering over real HTTP to a real aiohttp server."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiokafka import AIOKafkaProducer

from journey.cli import main
from journey.settings import Settings
from schemas.friction import friction_id_for
from streams.alerts import AlertConsumer, AlertStats, alerts_group, run_alerts
from streams.alerts_config import AlertsConfig, load_config
from streams.kafka import TopicPartition, create_topics, make_consumer, make_producer
from streams.topics import topics
from tests.integration.helpers import read_topic, wait_for
from tests.ports import free_port

pytestmark = pytest.mark.integration

RULES = ("repeat_contact", "sla_breach")
SEVERITIES = ("low", "medium", "high", "critical")


# -- fixtures: a webhook receiver and topics of our own ----------------------------------


@dataclass
class Receiver:
    """A webhook receiver: records what it accepted; can fail or be slow on purpose."""

    accepted: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    requests: int = 0
    failing_until: float = 0.0  # loop time until which every request gets a 500
    delay: float = 0.0
    url: str = ""
    on_accept: Callable[[int], None] | None = None  # called with the count accepted so far

    def keys(self) -> Counter[str]:
        return Counter(key for key, _ in self.accepted)

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        body = await request.read()
        if self.delay:
            await asyncio.sleep(self.delay)
        if asyncio.get_running_loop().time() < self.failing_until:
            return web.Response(status=500, text="down for maintenance")
        assert request.headers["Content-Type"] == "application/json"
        assert request.headers["X-Test"] == "yes"
        self.accepted.append((request.headers["Idempotency-Key"], orjson.loads(body)))
        if self.on_accept is not None:
            self.on_accept(len(self.accepted))
        return web.Response(status=204)


async def serve(receiver: Receiver, port: int = 0) -> web.AppRunner:
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    receiver.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    return runner


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    got = Receiver()
    runner = await serve(got)
    yield got
    await runner.cleanup()


@pytest.fixture
async def alert_settings(settings: Settings, kafka: str) -> Settings:
    """The session's settings with a friction topic, DLQ topic and app id of this test."""
    run = uuid.uuid4().hex[:6]
    own = settings.model_copy(update={
        "topic_friction": f"{settings.topic_friction}.{run}",
        "topic_alerts_dlq": f"{settings.topic_alerts_dlq}.{run}",
        "app_id": f"{settings.app_id}-{run}",
    })
    spec = topics(own)
    await create_topics(kafka, [spec.friction, spec.alerts_dlq])
    return own


# -- helpers -----------------------------------------------------------------------------


def frictions(n: int, customers: int | None = None) -> list[dict[str, Any]]:
    """n friction events of distinct ids, spread over customers and rules."""
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    out = []
    for i in range(n):
        customer = f"cust-{i % (customers or n)}"
        rule = RULES[i % len(RULES)]
        evidence = [str(uuid.uuid4())]
        out.append({
            "friction_id": friction_id_for(rule, customer, evidence),
            "rule": rule,
            "severity": SEVERITIES[i % len(SEVERITIES)],
            "customer_key": customer,
            "occurred_at": now,
            "detected_at": now,
            "stage": "support",
            "case_id": f"case-{i}",
            "channel": "phone",
            "evidence": evidence,
            "message": f"friction number {i}",
        })
    return out


async def produce(bootstrap: str, topic: str, docs: Iterable[dict[str, Any]], *,
                  transactional: bool = False, raw: Iterable[bytes] = ()) -> None:
    """Write friction keyed by customer: in one transaction, as the detectors do, or not."""
    if transactional:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap,
                                    transactional_id=f"alerts-test-{uuid.uuid4().hex[:8]}")
    else:
        producer = make_producer(bootstrap)
    await producer.start()
    try:
        if transactional:
            await producer.begin_transaction()
        futures = [await producer.send(topic, orjson.dumps(d), key=d["customer_key"].encode())
                   for d in docs]
        futures += [await producer.send(topic, value, key=b"poison") for value in raw]
        if transactional:
            await producer.commit_transaction()
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def produce_aborted(bootstrap: str, topic: str, docs: Iterable[dict[str, Any]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap,
                                transactional_id=f"alerts-abort-{uuid.uuid4().hex[:8]}")
    await producer.start()
    try:
        await producer.begin_transaction()
        for d in docs:
            await producer.send(topic, orjson.dumps(d), key=d["customer_key"].encode())
        await producer.flush()
        await producer.abort_transaction()
    finally:
        await producer.stop()


async def offsets(settings: Settings, group: str) -> tuple[int, int]:
    """(committed by `group`, end offsets) summed over the friction topic's partitions."""
    consumer = make_consumer(settings.bootstrap, group_id=group)
    await consumer.start()
    try:
        tps = [TopicPartition(settings.topic_friction, p)
               for p in range(settings.topic_partitions)]
        ends = await consumer.end_offsets(tps)
        committed = 0
        for tp in tps:
            committed += await consumer.committed(tp) or 0
        return committed, sum(ends.values())
    finally:
        await consumer.stop()


def config_file(tmp_path: Path, text: str) -> AlertsConfig:
    path = tmp_path / f"alerts-{uuid.uuid4().hex[:6]}.toml"
    path.write_text(text, encoding="utf-8")
    return load_config(path)


def sinks(file: Path, url: str, *, batch_size: int = 500, retry: str = "",
          concurrency: int = 8) -> str:
    """A config of one JSON-lines sink and one webhook sink, no throttling."""
    return f"""
[alerts]
batch_size = {batch_size}
throttle_seconds = 0
summary_seconds = 0

[[sinks]]
name = "archive"
type = "file"
path = "{file}"

[[sinks]]
name = "hook"
type = "webhook"
url = "{url}"
timeout_seconds = 2
concurrency = {concurrency}
headers = {{ X-Test = "yes" }}
retry = {{ {retry or "attempts = 5, max_seconds = 10, first_backoff_seconds = 0.1"} }}
"""


def file_ids(path: Path) -> Counter[str]:
    if not path.exists():
        return Counter()
    return Counter(orjson.loads(line)["friction_id"] for line in path.read_bytes().splitlines())


def ids(docs: Iterable[dict[str, Any]]) -> Counter[str]:
    return Counter(d["friction_id"] for d in docs)


# -- the tests ---------------------------------------------------------------------------


async def test_every_alert_arrives_exactly_once_in_each_sink(
    alert_settings: Settings, receiver: Receiver, tmp_path: Path
) -> None:
    docs = frictions(40, customers=20)
    topic = alert_settings.topic_friction
    await produce(alert_settings.bootstrap, topic, docs, transactional=True)
    # a replay republishes the same friction ids; an aborted transaction never counts
    await produce(alert_settings.bootstrap, topic, docs[:5], transactional=True)
    await produce_aborted(alert_settings.bootstrap, topic, frictions(3))
    archive = tmp_path / "archive.jsonl"
    config = config_file(tmp_path, sinks(archive, receiver.url))
    stats = await asyncio.wait_for(run_alerts(alert_settings, config, max_alerts=45), 120)

    assert receiver.keys() == ids(docs)
    assert file_ids(archive) == ids(docs)
    by_id = {d["friction_id"]: d for d in docs}
    assert all(body == by_id[key] for key, body in receiver.accepted)
    assert (stats.read, stats.duplicates, stats.invalid, stats.dead_lettered) == (45, 5, 0, 0)
    assert stats.sinks["hook"].delivered == stats.sinks["archive"].delivered == 40

    # Everything was committed: a second run finds nothing to deliver.
    again = await run_alerts(alert_settings, config, idle_exit=3)
    assert again.read == 0
    assert receiver.keys() == ids(docs)
    assert file_ids(archive) == ids(docs)


async def test_a_graceful_stop_mid_stream_then_a_restart_delivers_each_once(
    alert_settings: Settings, receiver: Receiver, tmp_path: Path
) -> None:
    docs = frictions(60)
    await produce(alert_settings.bootstrap, alert_settings.topic_friction, docs)
    receiver.delay = 0.02  # slow enough that the stop lands in the middle
    archive = tmp_path / "archive.jsonl"
    config = config_file(tmp_path, sinks(archive, receiver.url, batch_size=10,
                                         concurrency=4))
    stop = asyncio.Event()
    # Stopped by the 25th delivery, in the middle of a batch (at most ten records each).
    receiver.on_accept = lambda n: stop.set() if n == 25 else None
    first = await asyncio.wait_for(run_alerts(alert_settings, config, stop_event=stop), 120)
    # the batch in flight was finished and committed, and no further one started
    assert 25 <= first.read < 35
    assert len(receiver.accepted) == first.read == sum(file_ids(archive).values())
    committed, _ = await offsets(alert_settings, f"{alert_settings.app_id}-alerts")
    assert committed == first.read

    second = await asyncio.wait_for(run_alerts(alert_settings, config, idle_exit=3), 120)
    assert first.read + second.read == 60
    assert receiver.keys() == ids(docs)
    assert file_ids(archive) == ids(docs)


@pytest.mark.parametrize("outage", ["http_500", "refused"])
async def test_a_webhook_that_recovers_within_the_budget_loses_nothing(
    alert_settings: Settings, tmp_path: Path, outage: str
) -> None:
    docs = frictions(20)
    await produce(alert_settings.bootstrap, alert_settings.topic_friction, docs)
    receiver = Receiver()
    loop = asyncio.get_running_loop()
    runner: web.AppRunner | None = None
    port = free_port()
    if outage == "http_500":
        receiver.failing_until = loop.time() + 2.0
        runner = await serve(receiver, port)
    receiver.url = f"http://127.0.0.1:{port}/hook"
    archive = tmp_path / "archive.jsonl"
    config = config_file(tmp_path, sinks(
        archive, receiver.url,
        retry="attempts = 40, max_seconds = 30, first_backoff_seconds = 0.1, "
              "max_backoff_seconds = 0.5"))
    task = asyncio.create_task(run_alerts(alert_settings, config, max_alerts=20))
    try:
        if outage == "refused":
            await asyncio.sleep(2.0)  # nothing listens: connections are refused
            assert not task.done()
            runner = await serve(receiver, port)
        stats = await asyncio.wait_for(task, 120)
    finally:
        if runner is not None:
            await runner.cleanup()
    assert receiver.keys() == ids(docs)
    assert file_ids(archive) == ids(docs)
    hook = stats.sinks["hook"]
    assert hook.retries > 0 and hook.last_error is not None
    assert (hook.delivered, hook.dead_lettered, stats.dead_lettered) == (20, 0, 0)
    if outage == "http_500":
        assert receiver.requests > 20
        assert "HTTP 500" in hook.last_error
    assert await read_topic(alert_settings, alert_settings.topic_alerts_dlq) == []


async def test_a_webhook_down_beyond_its_budget_dead_letters_every_alert_and_commits(
    alert_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    docs = frictions(20)
    await produce(alert_settings.bootstrap, alert_settings.topic_friction, docs,
                  raw=[b"this is no friction"])
    down = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    archive = tmp_path / "archive.jsonl"
    config = config_file(tmp_path, sinks(
        archive, down, retry="attempts = 3, max_seconds = 3, first_backoff_seconds = 0.1"))
    stats = await asyncio.wait_for(run_alerts(alert_settings, config, max_alerts=21), 120)

    assert file_ids(archive) == ids(docs)  # the other sink is not held back
    assert stats.sinks["hook"].dead_lettered == 20
    assert (stats.invalid, stats.dead_lettered) == (1, 21)
    committed, end = await offsets(alert_settings, f"{alert_settings.app_id}-alerts")
    assert committed == end == 21

    records = await read_topic(alert_settings, alert_settings.topic_alerts_dlq)
    letters = [orjson.loads(r.value) for r in records]
    hook = [d for d in letters if d["sink"] == "hook"]
    assert Counter(d["friction"]["friction_id"] for d in hook) == ids(docs)
    for letter in hook:
        assert letter["sink_type"] == "webhook"
        assert "Cannot connect" in letter["error"] or "Connect" in letter["error"]
        assert down in letter["error"]
        assert 1 <= letter["attempts"] <= 3
        assert letter["failed_at"].endswith("Z")
        assert letter["source"]["topic"] == alert_settings.topic_friction
    assert all(r.key == orjson.loads(r.value)["friction"]["customer_key"].encode()
               for r in records if orjson.loads(r.value)["sink"] == "hook")
    [poison] = [d for d in letters if d["sink"] is None]
    assert poison["friction"] is None and poison["raw"] == "this is no friction"

    # `journey alerts dlq` lists them
    monkeypatch.setenv("JOURNEY_KAFKA_BOOTSTRAP", alert_settings.bootstrap)
    monkeypatch.setenv("JOURNEY_TOPIC_ALERTS_DLQ", alert_settings.topic_alerts_dlq)
    await asyncio.to_thread(main, ["alerts", "dlq", "--format", "json", "-n", "5"])
    listing = json.loads(capsys.readouterr().out)
    assert (listing["total"], listing["by_sink"]) == (21, {"hook": 20, "(invalid record)": 1})
    assert len(listing["records"]) == 5


async def test_two_instances_of_one_group_share_the_work(
    alert_settings: Settings, receiver: Receiver, tmp_path: Path
) -> None:
    stop = asyncio.Event()
    instances = [
        AlertConsumer(alert_settings,
                      config_file(tmp_path, sinks(tmp_path / f"archive-{i}.jsonl",
                                                  receiver.url, batch_size=10)),
                      stop_event=stop)
        for i in range(2)
    ]
    tasks = [asyncio.create_task(c.run()) for c in instances]
    try:
        all_partitions = {TopicPartition(alert_settings.topic_friction, p)
                          for p in range(alert_settings.topic_partitions)}
        await wait_for(lambda: all(c.assignment for c in instances)
                       and instances[0].assignment | instances[1].assignment == all_partitions
                       and not instances[0].assignment & instances[1].assignment,
                       60, "both instances to own partitions")
        docs = frictions(80, customers=40)
        await produce(alert_settings.bootstrap, alert_settings.topic_friction, docs)
        await wait_for(lambda: len(receiver.accepted) >= 80, 60, "every alert")
        await asyncio.sleep(1.0)  # a repeat would show up now
        stop.set()
        results: list[AlertStats] = await asyncio.wait_for(asyncio.gather(*tasks), 60)
    finally:
        stop.set()
        for t in tasks:
            if not t.done():
                t.cancel()
    assert receiver.keys() == ids(docs)
    assert all(stats.read > 0 for stats in results)
    assert sum(stats.read for stats in results) == 80
    files = file_ids(tmp_path / "archive-0.jsonl") + file_ids(tmp_path / "archive-1.jsonl")
    assert files == ids(docs)


async def test_from_latest_skips_what_came_before_the_first_start(
    alert_settings: Settings, receiver: Receiver, tmp_path: Path
) -> None:
    before, after = frictions(5), frictions(5)
    await produce(alert_settings.bootstrap, alert_settings.topic_friction, before)
    config = config_file(tmp_path, sinks(tmp_path / "a.jsonl", receiver.url))
    stop = asyncio.Event()
    consumer = AlertConsumer(alert_settings, config, from_beginning=False, stop_event=stop)
    task = asyncio.create_task(consumer.run())
    try:
        await consumer.wait_assigned()
        await produce(alert_settings.bootstrap, alert_settings.topic_friction, after)
        await wait_for(lambda: len(receiver.accepted) >= 5, 60, "the later alerts")
        stop.set()
        stats = await asyncio.wait_for(task, 60)
    finally:
        stop.set()
    assert receiver.keys() == ids(after)
    assert stats.read == 5
    # the group has committed offsets now: --from-latest no longer matters
    await produce(alert_settings.bootstrap, alert_settings.topic_friction, before[:2])
    again = await run_alerts(alert_settings, config, from_beginning=False, idle_exit=3)
    assert again.read == 2
    assert receiver.keys() == ids(after) + ids(before[:2])


def _cli(settings: Settings, *args: str) -> list[str]:
    return [sys.executable, "-m", "journey", "alerts", *args]


def _env(settings: Settings, bootstrap: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "JOURNEY_KAFKA_BOOTSTRAP": bootstrap or settings.bootstrap,
        "JOURNEY_TOPIC_FRICTION": settings.topic_friction,
        "JOURNEY_TOPIC_ALERTS_DLQ": settings.topic_alerts_dlq,
        "JOURNEY_APP_ID": settings.app_id,
        "JOURNEY_HOME": str(settings.home),
    })
    return env


async def test_the_command_stops_gracefully_on_sigterm_and_resumes(
    alert_settings: Settings, tmp_path: Path
) -> None:
    docs = frictions(30)
    await produce(alert_settings.bootstrap, alert_settings.topic_friction, docs)
    archive = tmp_path / "archive.jsonl"
    path = tmp_path / "alerts.toml"
    path.write_text(f'[alerts]\nthrottle_seconds = 0\n[[sinks]]\ntype = "file"\n'
                    f'path = "{archive}"\n[[sinks]]\ntype = "console"\n')
    proc = await asyncio.create_subprocess_exec(
        *_cli(alert_settings, "--config", str(path), "--stats"),
        env=_env(alert_settings), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    try:
        await wait_for(lambda: sum(file_ids(archive).values()) >= 30, 60, "the file sink")
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
    assert proc.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    stats = json.loads(lines[-1])
    assert stats["read"] == 30 and stats["sinks"]["file"]["delivered"] == 30
    # the console sink printed one line per alert, each naming its customer
    printed = [line for line in lines[:-1] if "customer cust-" in line]
    assert len(printed) == 30
    assert "alerts: read 30" in err.decode()

    # a restart finds everything committed
    proc = await asyncio.create_subprocess_exec(
        *_cli(alert_settings, "--config", str(path), "--idle-exit", "3", "--stats"),
        env=_env(alert_settings), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert json.loads(out.decode().splitlines()[-1])["read"] == 0
    assert file_ids(archive) == ids(docs)


async def test_unreachable_kafka_is_one_error_line(alert_settings: Settings) -> None:
    proc = await asyncio.create_subprocess_exec(
        *_cli(alert_settings, "--idle-exit", "1"),
        env=_env(alert_settings, bootstrap=f"127.0.0.1:{free_port()}"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1
    error_lines = [line for line in err.decode().splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1
    assert "is not reachable" in error_lines[0] and "JOURNEY_KAFKA_BOOTSTRAP" in error_lines[0]
    assert "Traceback" not in err.decode()


def held_sinks(file: Path, url: str, hold: float) -> str:
    """A file sink that holds friction and a webhook that does not; both take retractions."""
    return f"""
[alerts]
throttle_seconds = 0
summary_seconds = 0

[[sinks]]
name = "held"
type = "file"
path = "{file}"
hold_seconds = {hold}
retractions = true

[[sinks]]
name = "hook"
type = "webhook"
url = "{url}"
headers = {{ X-Test = "yes" }}
retractions = true
"""


async def test_held_friction_waits_and_what_is_retracted_meanwhile_never_arrives(
    alert_settings: Settings, receiver: Receiver, tmp_path: Path
) -> None:
    docs = frictions(20, customers=10)
    later = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    retractions = [{**d, "status": "retracted", "detected_at": later} for d in docs[:5]]
    await produce(alert_settings.bootstrap, alert_settings.topic_friction, docs + retractions,
                  transactional=True)
    archive = tmp_path / "held.jsonl"

    # A long hold: nothing reaches the file and its records stay uncommitted.
    long_hold = config_file(tmp_path, held_sinks(archive, receiver.url, 600))
    first = await asyncio.wait_for(run_alerts(alert_settings, long_hold, idle_exit=3), 60)
    assert file_ids(archive) == Counter()
    assert first.sinks["held"].held == 25
    committed, end = await offsets(alert_settings, alerts_group(alert_settings))
    assert committed < end

    # A restart with a short hold delivers what stood, once, and commits everything.
    short_hold = config_file(tmp_path, held_sinks(archive, receiver.url, 2))
    second = await asyncio.wait_for(run_alerts(alert_settings, short_hold, idle_exit=5), 60)
    assert file_ids(archive) == ids(docs[5:])
    assert second.sinks["held"].withdrawn == 5
    assert second.sinks["held"].retractions_delivered == 0
    # the webhook holds nothing: it got every friction and retraction in the first run, and
    # again in the second, since the held ones kept the shared offsets back (at least once)
    statuses = Counter((key, body.get("status", "detected")) for key, body in
                       receiver.accepted)
    assert statuses == Counter({**{(d["friction_id"], "detected"): 2 for d in docs},
                                **{(d["friction_id"], "retracted"): 2 for d in docs[:5]}})
    assert second.sinks["hook"].retractions_delivered == 5
    again = await run_alerts(alert_settings, short_hold, idle_exit=3)
    assert again.read == 0, "everything was committed"
