"""The HTTP collector on the real broker, worker and warehouse: native and Segment calls
reach ClickHouse exactly once, bad events the DLQ with their reason, refusals answer
401/403/413/429 and are counted."""

from __future__ import annotations

import base64
import gzip
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import orjson
import pytest

from journey.collector.run import CollectorProcess
from journey.settings import Settings
from journey.worker import WorkerProcess, settings_env
from projections.clickhouse.runner import run_query
from schemas.dead_letter import DeadLetter
from schemas.segment import event_id_of
from tests.integration.helpers import read_topic, touchpoint, wait_for
from tests.ports import free_port

pytestmark = pytest.mark.integration

KEY = "wk_test_1"
BROWSER_KEY = "wk_browser_2"
ORIGIN = "https://shop.test"
BEARER = {"Authorization": f"Bearer {KEY}"}


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def collector_settings(settings: Settings, **extra: Any) -> Settings:
    return settings.model_copy(update={
        "collector_port": free_port(), "collector_write_keys": f"server={KEY},browser="
        f"{BROWSER_KEY}", "collector_cors_origins": ORIGIN, "collector_send_timeout": 5.0,
        **extra})


def start(settings: Settings) -> CollectorProcess:
    proc = CollectorProcess(settings, settings_env(settings))
    proc.start()
    return proc


@pytest.fixture(scope="module")
def collector(kafka: str, settings: Settings) -> Iterator[CollectorProcess]:
    proc = start(collector_settings(settings))
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def limited(kafka: str, settings: Settings) -> Iterator[CollectorProcess]:
    """A collector with small limits: 64 KiB bodies, 20 events/s per key."""
    proc = start(collector_settings(settings, collector_max_body_bytes=64 * 1024,
                                    collector_rate_limit=20.0,
                                    collector_rate_burst_seconds=1.0))
    yield proc
    proc.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def post(http: aiohttp.ClientSession, url: str, body: bytes,
               headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
    async with http.post(url, data=body, headers=headers) as r:
        raw = await r.read()
        return r.status, (orjson.loads(raw) if raw else None), r.headers


def stored(settings: Settings, event_ids: list[str]) -> dict[str, int]:
    _, rows = run_query(
        settings, "SELECT event_id, count() FROM touchpoints FINAL WHERE event_id IN "
        "{ids:Array(String)} GROUP BY event_id", {"ids": event_ids})
    return {str(r[0]): int(r[1]) for r in rows}


async def wait_stored(settings: Settings, event_ids: list[str]) -> None:
    await wait_for(lambda: len(stored(settings, event_ids)) == len(set(event_ids)), 90,
                   f"{len(set(event_ids))} touchpoints in ClickHouse")


def rows(settings: Settings, event_ids: list[str]) -> dict[str, dict[str, Any]]:
    columns, found = run_query(
        settings, "SELECT event_id, type, channel, customer_id, anonymous_id, occurred_at, "
        "source, properties FROM touchpoints FINAL WHERE event_id IN {ids:Array(String)}",
        {"ids": event_ids})
    return {str(r[0]): dict(zip(columns, r, strict=True)) for r in found}


def metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{"):
            got = line[len(name) + 1:line.index("}")]
            if ",".join(sorted(got.split(","))) == want:
                return float(line.rsplit(" ", 1)[1])
    return 0.0


async def metrics(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(f"{url}/metrics", headers=BEARER) as r:
        assert r.status == 200
        return await r.text()


async def test_native_bodies_reach_clickhouse_exactly_once(
        settings: Settings, worker: WorkerProcess, collector: CollectorProcess,
        http: aiohttp.ClientSession) -> None:
    url = f"{collector.url}/v1/touchpoints"
    one = touchpoint("page_view", customer_id="c-http-1")
    array = [touchpoint("page_view", anonymous_id=f"a-http-{i}") for i in range(5)]
    lines = [touchpoint("site_visit", customer_id="c-http-2") for _ in range(4)]
    zipped = [touchpoint("search", customer_id="c-http-3", properties={"query": "boots"})
              for _ in range(3)]
    ndjson = b"\n".join(orjson.dumps(e) for e in lines) + b"\n"
    sends = [
        (orjson.dumps(one), {}, 1),
        (orjson.dumps(array), {"Content-Type": "application/json"}, 5),
        (ndjson, {"Content-Type": "application/x-ndjson"}, 4),
        (gzip.compress(orjson.dumps(zipped)), {"Content-Encoding": "gzip"}, 3),
        (gzip.compress(ndjson), {"Content-Encoding": "gzip",
                                 "Content-Type": "application/x-ndjson"}, 4),  # a repeat
        (orjson.dumps(array), {}, 5),  # the producer retried
    ]
    for body, headers, accepted in sends:
        status, answer, _ = await post(http, url, body, {**BEARER, **headers})
        assert (status, answer) == (200, {"accepted": accepted, "rejected": []})
    ids = [e["event_id"] for e in [one, *array, *lines, *zipped]]
    await wait_stored(settings, ids)
    assert stored(settings, ids) == dict.fromkeys(ids, 1)
    found = rows(settings, ids)
    assert found[one["event_id"]]["customer_id"] == "c-http-1"
    assert found[array[0]["event_id"]]["anonymous_id"] == "a-http-0"
    ingest = [r for r in await read_topic(settings, settings.topic_ingest)
              if r.value and orjson.loads(r.value).get("event_id") in set(ids)]
    # keyed by customer id, else anonymous id; each send once (6 + 5 repeats)
    assert len(ingest) == len(ids) + 4 + 5
    for record in ingest:
        body = orjson.loads(record.value)
        assert record.key == (body.get("customer_id") or body["anonymous_id"]).encode()


async def test_bad_events_reach_the_dlq_with_their_reason(
        settings: Settings, collector: CollectorProcess, http: aiohttp.ClientSession) -> None:
    marker = uuid.uuid4().hex
    good = touchpoint("page_view", customer_id=f"c-{marker}")
    bad: list[tuple[str, Any]] = [
        ("unknown_type", touchpoint("teleport", customer_id=f"c-{marker}")),
        ("missing_identity", {k: v for k, v in touchpoint(source=marker).items()
                              if k != "customer_id"}),
        ("naive_timestamp", touchpoint(customer_id=f"c-{marker}",
                                       occurred_at=datetime(2026, 1, 1))),
        ("payload_too_large", touchpoint(customer_id=f"c-{marker}", properties={
            "url": "u", "pad": "x" * 70_000})),
        ("not_an_object", [marker]),
    ]
    events = [good, *(e for _, e in bad)]
    status, answer, _ = await post(http, f"{collector.url}/v1/touchpoints",
                                   orjson.dumps(events), BEARER)
    assert status == 200 and answer["accepted"] == 1
    assert [(r["index"], r["reason"]) for r in answer["rejected"]] == [
        (i + 1, reason) for i, (reason, _) in enumerate(bad)]
    assert all(r["message"] for r in answer["rejected"])
    letters = [DeadLetter.model_validate_json(r.value)
               for r in await read_topic(settings, settings.topic_dlq)]
    ours = {letter.offset: letter for letter in letters
            if marker.encode() in letter.raw_bytes()}
    assert sorted(ours) == [1, 2, 3, 4, 5]
    for index, (reason, event) in enumerate(bad, start=1):
        letter = ours[index]
        assert letter.error.reason == reason and letter.error.stage == "collect"
        assert letter.topic == "http:/v1/touchpoints"
        assert orjson.loads(letter.raw_bytes()) == event
    text = await metrics(http, collector.url)
    assert metric(text, "journey_collector_rejected_events_total", key="server",
                  reason="payload_too_large") >= 1


def segment_calls(marker: str) -> dict[str, Any]:
    sent = datetime.now(UTC) + timedelta(hours=1)  # the device's clock is an hour fast
    happened = sent - timedelta(seconds=30)

    def stamp(**message: Any) -> dict[str, Any]:
        return {"originalTimestamp": happened.isoformat(), "sentAt": sent.isoformat(),
                "context": {"library": {"name": "analytics-python"}}, **message}

    return {
        "track": stamp(userId=f"u-{marker}", event="Order Completed",
                       messageId=f"order-{marker}",
                       properties={"order_id": "o-1", "revenue": 25.5, "currency": "EUR"}),
        "identify": stamp(userId=f"u-{marker}", anonymousId=f"a-{marker}",
                          messageId=str(uuid.uuid4()), traits={"email": "x@shop.test"}),
        "page": stamp(anonymousId=f"a-{marker}", messageId=f"page-{marker}",
                      properties={"url": "https://shop.test/boots"}),
        "screen": stamp(userId=f"u-{marker}", name="Basket", messageId=f"screen-{marker}"),
        "alias": stamp(userId=f"u-{marker}", previousId=f"b-{marker}",
                       messageId=f"alias-{marker}"),
        "group": stamp(userId=f"u-{marker}", groupId="acme", messageId=f"group-{marker}"),
    }


async def test_segment_calls_reach_clickhouse_mapped(
        settings: Settings, worker: WorkerProcess, collector: CollectorProcess,
        http: aiohttp.ClientSession) -> None:
    marker = uuid.uuid4().hex[:10]
    calls = segment_calls(marker)
    for call, message in calls.items():
        status, answer, _ = await post(http, f"{collector.url}/v1/{call}",
                                       orjson.dumps(message), basic(KEY))
        assert (status, answer) == (200, {"success": True, "accepted": 1, "rejected": []})
    # analytics.js: the first letter of the call, text/plain, the key in the body
    browser = {"writeKey": BROWSER_KEY, "type": "track", "anonymousId": f"a-{marker}",
               "event": "Product Viewed", "messageId": f"view-{marker}",
               "properties": {"product_id": "p-9", "price": 9.5},
               "context": {"library": {"name": "analytics.js"}}}
    status, answer, _ = await post(http, f"{collector.url}/v1/t", orjson.dumps(browser),
                                   {"Content-Type": "text/plain", "Origin": ORIGIN})
    assert (status, answer["accepted"]) == (200, 1)
    batch = {"sentAt": datetime.now(UTC).isoformat(), "batch": [
        {"type": "track", "userId": f"u-{marker}", "event": "Product Added",
         "messageId": f"add-{marker}", "properties": {"product_id": "p-9"}},
        {"type": "track", "userId": f"u-{marker}", "event": "Video Played",
         "messageId": f"video-{marker}"},
        {"type": "bogus", "userId": f"u-{marker}"},
    ]}
    status, answer, _ = await post(http, f"{collector.url}/v1/batch",
                                   gzip.compress(orjson.dumps(batch)),
                                   {**basic(KEY), "Content-Encoding": "gzip"})
    assert status == 200 and answer["accepted"] == 1
    # Video Played is a generic `track`, refused until that type is registered
    assert [(r["index"], r["reason"]) for r in answer["rejected"]] == [
        (1, "unknown_type"), (2, "unknown_type")]

    messages = [*calls.values(), browser, batch["batch"][0]]
    ids = [event_id_of(m) for m in messages]
    await wait_stored(settings, ids)
    assert stored(settings, ids) == dict.fromkeys(ids, 1)
    found = rows(settings, ids)
    by_call = dict(zip([*calls, "browser", "added"], ids, strict=True))
    assert by_call["identify"] == calls["identify"]["messageId"]  # a UUID is kept
    expect = {"track": ("purchase", "web"), "identify": ("identify", "web"),
              "page": ("page_view", "web"), "screen": ("page_view", "mobile_app"),
              "alias": ("identify", "web"), "group": ("account_updated", "web"),
              "browser": ("product_view", "web"), "added": ("add_to_cart", "web")}
    for call, (type_, channel) in expect.items():
        row = found[by_call[call]]
        assert (row["type"], row["channel"]) == (type_, channel), call
    purchase = found[by_call["track"]]
    assert purchase["source"] == "segment/analytics-python"
    assert orjson.loads(purchase["properties"])["revenue"] == 25.5
    # the clock skew is gone: 30 s before it was received, not an hour ahead
    occurred = datetime.fromisoformat(str(purchase["occurred_at"])).replace(tzinfo=UTC)
    assert timedelta(seconds=20) < datetime.now(UTC) - occurred < timedelta(minutes=5)
    alias = found[by_call["alias"]]
    assert (alias["customer_id"], alias["anonymous_id"]) == (f"u-{marker}", f"b-{marker}")

    video = [DeadLetter.model_validate_json(r.value)
             for r in await read_topic(settings, settings.topic_dlq)
             if f"video-{marker}".encode() in r.value]
    assert len(video) == 1 and video[0].error.stage == "segment"
    assert orjson.loads(video[0].raw_bytes()) == batch["batch"][1]


async def test_without_a_valid_key_nothing_is_sent(
        settings: Settings, collector: CollectorProcess, http: aiohttp.ClientSession) -> None:
    before = await metrics(http, collector.url)
    event = orjson.dumps(touchpoint(customer_id="c-unauthorized"))
    segment = orjson.dumps({"userId": "u", "event": "Order Completed", "writeKey": "nope",
                            "properties": {"order_id": "o", "revenue": 1}})
    refusals = [
        ("/v1/touchpoints", event, {}),
        ("/v1/touchpoints", event, {"Authorization": "Bearer wk_wrong"}),
        ("/v1/touchpoints", event, basic("wk_wrong")),
        ("/v1/touchpoints", event, {"Authorization": f"Token {KEY}"}),
        ("/v1/track", segment, {}),  # a body key that is no write key
        ("/v1/track", orjson.dumps({"userId": "u", "event": "X"}), {}),
        ("/v1/track", orjson.dumps({"writeKey": KEY, "userId": "u", "event": "X"}),
         {"Authorization": "Bearer wk_wrong"}),  # a wrong header is not overruled
    ]
    for path, body, headers in refusals:
        status, answer, _ = await post(http, f"{collector.url}{path}", body, headers)
        assert (status, answer["reason"]) == (401, "unauthorized"), (path, headers)
    async with http.get(f"{collector.url}/metrics") as r:
        assert r.status == 401
    after = await metrics(http, collector.url)
    name, labels = "journey_collector_refused_requests_total", {"key": "unknown",
                                                                 "reason": "unauthorized"}
    assert metric(after, name, **labels) - metric(before, name, **labels) == len(refusals) + 1
    status, answer, _ = await post(http, f"{collector.url}/v1/touchpoints", event, basic(KEY))
    assert (status, answer["accepted"]) == (200, 1)


async def test_cors_preflight_and_origins(
        collector: CollectorProcess, http: aiohttp.ClientSession) -> None:
    preflight = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"}
    async with http.options(f"{collector.url}/v1/batch", headers=preflight) as r:
        assert r.status == 204
        assert r.headers["Access-Control-Allow-Origin"] == ORIGIN
        assert "POST" in r.headers["Access-Control-Allow-Methods"]
        assert "Authorization" in r.headers["Access-Control-Allow-Headers"]
    async with http.options(f"{collector.url}/v1/batch",
                            headers={**preflight, "Origin": "https://evil.test"}) as r:
        assert r.status == 403 and "Access-Control-Allow-Origin" not in r.headers
    event = orjson.dumps(touchpoint(anonymous_id="a-cors"))
    status, _, headers = await post(http, f"{collector.url}/v1/touchpoints", event,
                                    {**BEARER, "Origin": ORIGIN})
    assert status == 200 and headers["Access-Control-Allow-Origin"] == ORIGIN
    status, answer, _ = await post(http, f"{collector.url}/v1/touchpoints", event,
                                   {**BEARER, "Origin": "https://evil.test"})
    assert (status, answer["reason"]) == (403, "origin_not_allowed")


async def test_body_limit_is_413_also_after_gunzip(
        settings: Settings, limited: CollectorProcess, http: aiohttp.ClientSession) -> None:
    url = f"{limited.url}/v1/touchpoints"
    before = await metrics(http, limited.url)
    big = orjson.dumps([touchpoint(customer_id="c-big", properties={"url": "u" * 4000})
                        for _ in range(20)])
    assert len(big) > 64 * 1024
    bomb = gzip.compress(b"[" + b" " * (10 * 1024 * 1024) + b"]")
    assert len(bomb) < 64 * 1024

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length to check up front
        for start in range(0, len(big), 8192):
            yield big[start:start + 8192]

    for body, headers in ((big, {}), (bomb, {"Content-Encoding": "gzip"}), (chunked(), {})):
        async with http.post(url, data=body, headers={**BEARER, **headers}) as r:
            assert r.status == 413
            assert (await r.json())["reason"] == "body_too_large"
    after = await metrics(http, limited.url)
    name, labels = "journey_collector_refused_requests_total", {"key": "server",
                                                                 "reason": "body_too_large"}
    assert metric(after, name, **labels) - metric(before, name, **labels) == 3


async def test_rate_limit_is_429_with_retry_after_per_key(
        limited: CollectorProcess, http: aiohttp.ClientSession) -> None:
    url = f"{limited.url}/v1/touchpoints"
    ten = orjson.dumps([touchpoint(customer_id="c-rate") for _ in range(10)])
    answers = [await post(http, url, ten, basic(BROWSER_KEY)) for _ in range(4)]
    statuses = [status for status, _, _ in answers]
    assert statuses[:2] == [200, 200] and 429 in statuses[2:], statuses
    status, answer, headers = next(a for a in answers if a[0] == 429)
    assert answer["reason"] == "rate_limited"
    assert int(headers["Retry-After"]) >= 1 and headers["X-RateLimit-Reset"]
    # another key has a bucket of its own
    status, _, _ = await post(http, url, ten, BEARER)
    assert status == 200
    text = await metrics(http, limited.url)
    assert metric(text, "journey_collector_refused_requests_total", key="browser",
                  reason="rate_limited") >= 1


async def test_health_openapi_and_docs(collector: CollectorProcess,
                                       http: aiohttp.ClientSession) -> None:
    async with http.get(f"{collector.url}/health") as r:
        assert r.status == 200 and (await r.json())["kafka"] is True
    async with http.get(f"{collector.url}/openapi.json") as r:
        doc = await r.json()
    assert doc["openapi"].startswith("3.1")
    assert {"/v1/touchpoints", "/v1/track", "/v1/identify", "/v1/page", "/v1/screen",
            "/v1/alias", "/v1/group", "/v1/batch"} <= set(doc["paths"])
    assert "Touchpoint" in doc["components"]["schemas"]
    async with http.get(f"{collector.url}/docs") as r:
        page = await r.text()
        assert r.status == 200 and r.content_type == "text/html"
    assert "/v1/touchpoints" in page and "<script" not in page
