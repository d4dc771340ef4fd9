"""The worker's HTTP API as a real process: tokens, /metrics and /health against real faults.

A broker of this module's own (it is stopped mid-test), a worker bound beyond loopback
with tokens, a consumer that joins one of the worker's groups and never commits (a hung
peer holding partitions), and the broker going away and coming back.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from journey.errors import ConfigurationError
from journey.settings import Settings
from journey.stack import KafkaStack
from journey.worker import WorkerProcess, settings_env
from projections.clickhouse.runner import run_query
from streams.kafka import make_consumer, make_producer
from streams.validator import validator_group
from tests.integration.helpers import own_broker, touchpoint
from tests.ports import free_port

pytestmark = pytest.mark.integration

TOKENS = ("tok-alpha-7f3c", "tok-beta-91d2")
STUCK_SECONDS = 4.0


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A broker of this module's own: it is stopped mid-test, the session's is not."""
    yield from own_broker(tmp_path_factory.mktemp("api-broker"))


def worker_settings(broker: Settings, root: Path, **extra: Any) -> Settings:
    run = f"api-{uuid.uuid4().hex[:6]}"
    home = root / run
    return broker.model_copy(update={
        "home": home, "kafka_bootstrap": broker.bootstrap,
        "clickhouse_dsn": f"chdb://{home / 'warehouse'}", "app_id": run,
        "worker_port": free_port(), "topic_ingest": f"{run}.ingest",
        "topic_touchpoints": f"{run}.touchpoints", "topic_dlq": f"{run}.dlq",
        "topic_friction": f"{run}.friction", "topic_alerts_dlq": f"{run}.alerts-dlq",
        "sink_batch_seconds": 0.3, **extra,
    })


@pytest.fixture(scope="module")
def exposed(broker: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A worker on every interface, with two tokens and quick health checks."""
    settings = worker_settings(
        broker, tmp_path_factory.mktemp("api-worker"), worker_host="0.0.0.0",
        api_tokens=",".join(TOKENS), health_interval_seconds=0.5,
        health_stuck_seconds=STUCK_SECONDS,
    )
    worker = WorkerProcess(settings, env=settings_env(settings))
    worker.start()
    yield settings
    worker.stop()


def call(settings: Settings, path: str, *, token: str | None = None, body: Any = None,
         method: str | None = None) -> tuple[int, dict[str, str], bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(f"{settings.worker_url}{path}", data=data,
                                     headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def wait_for(what: str, condition: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(0.25)
    raise AssertionError(f"{what} within {timeout:.0f}s; last seen: {last!r}")


def health(settings: Settings) -> tuple[int, dict[str, Any]]:
    status, _, body = call(settings, "/health", token=TOKENS[0])
    return status, json.loads(body)


def metric_samples(settings: Settings) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, headers, body = call(settings, "/metrics", token=TOKENS[1])
    assert status == 200, body
    assert headers["Content-Type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples}


async def produce(settings: Settings, values: list[bytes]) -> None:
    producer = make_producer(settings.bootstrap)
    await producer.start()
    try:
        for value in values:
            await producer.send(settings.topic_ingest, value)  # no key: every partition
        await producer.flush()
    finally:
        await producer.stop()


# ---- tokens ---------------------------------------------------------------------------


def test_the_worker_refuses_to_start_beyond_loopback_without_a_token(
    broker: Settings, tmp_path: Path,
) -> None:
    settings = worker_settings(broker, tmp_path, worker_host="0.0.0.0")
    env = {**os.environ, **settings_env(settings)}
    env.pop("JOURNEY_API_TOKENS", None)
    done = subprocess.run([sys.executable, "-m", "journey", "worker"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.startswith("error: the worker would serve its HTTP API on 0.0.0.0")
    assert "JOURNEY_API_TOKENS" in done.stderr and done.stderr.count("\n") == 1
    # nothing listens
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{settings.worker_url}/health", timeout=2)


@pytest.mark.parametrize("path", ["/health", "/metrics", "/status", "/analysis/map",
                                  "/router", "/"])
def test_every_route_wants_a_token(exposed: Settings, path: str) -> None:
    for token in (None, "", "wrong", TOKENS[0][:-1], TOKENS[0] + "x"):
        status, headers, body = call(exposed, path, token=token)
        assert status == 401, (path, token)
        assert headers["WWW-Authenticate"].startswith("Bearer")
        assert "bearer token" in json.loads(body)["error"]
    status, _, _ = call(exposed, path, token=TOKENS[1])
    assert status != 401


def test_query_with_a_token_is_gated_like_journey_sql(exposed: Settings) -> None:
    body = {"sql": "SELECT * FROM file('/etc/passwd', 'LineAsString')", "parameters": {}}
    assert call(exposed, "/query", body=body)[0] == 401
    status, _, answer = call(exposed, "/query", token=TOKENS[0], body=body)
    assert status == 400
    assert "reaches outside the warehouse" in json.loads(answer)["error"]
    status, _, answer = call(exposed, "/query", token=TOKENS[0], body={
        "sql": "SELECT count() > 0 AS tables FROM system.tables", "parameters": {}})
    assert status == 200, answer
    assert json.loads(answer)["rows"] == [[1]]
    # journey sql sends the first of its tokens; without one it is told what to set
    columns, rows = run_query(exposed, "SELECT 1 AS one")
    assert (columns, rows) == (["one"], [[1]])
    stranger = exposed.model_copy(update={"api_tokens": None})
    with pytest.raises(ConfigurationError, match="wants a bearer token: set JOURNEY_API_TOKENS"):
        run_query(stranger, "SELECT 1")
    wrong = exposed.model_copy(update={"api_tokens": "nope"})
    with pytest.raises(ConfigurationError, match="refused the token"):
        run_query(wrong, "SELECT 1")


# ---- /metrics and /health ---------------------------------------------------------------


def test_metrics_count_what_the_worker_did(exposed: Settings) -> None:
    before = metric_samples(exposed)
    good = [json.dumps(touchpoint()).encode() for _ in range(25)]
    asyncio.run(produce(exposed, [*good, b"{not json", b"[]"]))

    def counted() -> Any:
        samples = metric_samples(exposed)
        key = ("journey_ingest_read_total", ())
        read = samples[key] - before[key]
        return samples if read >= 27 else None

    samples = wait_for("the validator read the 27 messages", counted, 60)

    def grew(name: str, labels: tuple[tuple[str, str], ...] = ()) -> float:
        return float(samples.get((name, labels), 0) - before.get((name, labels), 0))

    assert grew("journey_ingest_read_total") == 27
    assert grew("journey_validated_total") == 25
    assert grew("journey_invalid_total", (("reason", "invalid_json"),)) == 1
    assert grew("journey_invalid_total", (("reason", "not_an_object"),)) == 1
    rows = wait_for("the sink wrote 25 touchpoint rows", lambda: (
        s := metric_samples(exposed))[("journey_touchpoint_rows_written_total", ())]
        - before.get(("journey_touchpoint_rows_written_total", ()), 0) >= 25 and s, 60)
    assert rows[("journey_rows_written_total", (("table", "touchpoints"),))] >= 25
    assert rows[("journey_worker_start_time_seconds", ())] > 0
    assert rows[("journey_health_check_ok", (("check", "broker"),))] == 1


def test_health_is_ok_when_everything_answers(exposed: Settings) -> None:
    _, body = wait_for("a healthy worker", lambda: (h := health(exposed))[0] == 200 and h, 60)
    assert body["ok"] is True and body["warehouse"] is True
    assert set(body["checks"]) >= {"warehouse", "broker", "consumer_groups"}
    assert all(check["ok"] for check in body["checks"].values())
    assert body["checks"]["broker"]["brokers"] == 1
    assert validator_group(exposed) in body["checks"]["consumer_groups"]["lag"]


def test_a_stuck_consumer_group_fails_health_until_it_moves(exposed: Settings) -> None:
    group = validator_group(exposed)

    async def hung_peer() -> None:
        # joins the validator's group, takes partitions and never reads or commits them
        peer = make_consumer(exposed.bootstrap, exposed.topic_ingest, group_id=group,
                             max_poll_interval_ms=600_000)
        await peer.start()
        try:
            deadline = time.monotonic() + 60
            while not peer.assignment():
                assert time.monotonic() < deadline, "the peer got no partition"
                await asyncio.sleep(0.2)
            await produce(exposed, [json.dumps(touchpoint()).encode() for _ in range(40)])
            began = time.monotonic()
            while True:
                status, body = await asyncio.to_thread(health, exposed)
                if status == 503 and any(f"consumer group {group} is stuck" in reason
                                         for reason in body.get("reasons", [])):
                    break
                assert time.monotonic() - began < STUCK_SECONDS + 60, body
                await asyncio.sleep(0.5)
            stuck = body["checks"]["consumer_groups"]["stuck"]
            assert {s["group"] for s in stuck} == {group}
            assert all(s["lag"] > 0 and s["seconds"] >= STUCK_SECONDS for s in stuck)
            assert body["checks"]["broker"]["ok"] and body["checks"]["warehouse"]["ok"]
            samples = await asyncio.to_thread(metric_samples, exposed)
            assert samples[("journey_health_check_ok", (("check", "consumer_groups"),))] == 0
            assert samples[("journey_consumer_group_lag", (("group", group),))] > 0
            assert samples[("journey_healthy", ())] == 0
        finally:
            await peer.stop()

    asyncio.run(hung_peer())
    # the peer left: the worker takes its partitions over, the group moves, health returns
    wait_for("health back after the hung peer left", lambda: health(exposed)[0] == 200, 120)


def test_health_fails_while_the_broker_is_away(exposed: Settings, broker: Settings) -> None:
    wait_for("a healthy worker", lambda: health(exposed)[0] == 200, 60)
    stack = KafkaStack(broker)
    stack.down()
    try:
        _, body = wait_for(
            "health to report the broker",
            lambda: (h := health(exposed))[0] == 503 and not h[1]["checks"]["broker"]["ok"] and h,
            60)
        assert body["checks"]["broker"]["reason"].startswith(
            f"broker: Kafka at {exposed.bootstrap} does not answer")
        assert any(r.startswith("broker:") for r in body["reasons"])
        assert body["warehouse"] is True
        # /metrics still answers, and says so
        samples = metric_samples(exposed)
        assert samples[("journey_health_check_ok", (("check", "broker"),))] == 0
    finally:
        stack.up()
    wait_for("health back with the broker", lambda: health(exposed)[0] == 200, 180)
