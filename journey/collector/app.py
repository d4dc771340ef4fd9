"""The collector's HTTP app (aiohttp): native and Segment endpoints behind write keys,
limits and CORS, answering once the broker acknowledged (docs/adr/0003-http-collector.md)."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from journey.collector.access import (
    OPEN_KEY,
    UNKNOWN_KEY,
    CorsPolicy,
    RateLimiter,
    WriteKeys,
    presented_key,
)
from journey.collector.metrics import CONTENT_TYPE_LATEST, CollectorMetrics
from journey.collector.openapi import NATIVE_PATH, SEGMENT_PATHS, docs_page, openapi_json
from journey.settings import Settings
from projections.collect import (
    Collected,
    EmptyBodyError,
    collect_native,
    collect_segment,
    split_native,
    split_segment,
)
from schemas.segment import SHORT_PATHS
from streams.publish import BrokerUnavailableError, Publisher
from streams.topics import topics

log = logging.getLogger(__name__)

NDJSON_TYPES: Final = frozenset({"application/x-ndjson", "application/ndjson",
                                 "application/jsonl", "application/x-jsonlines"})
STATIC_DIR: Final = Path(__file__).parent / "static"
# Static files served as they are; the browser snippet will live here.
STATIC_FILES: Final = {"/v1/journey.js": ("journey.js", "application/javascript")}
PREFLIGHT_MAX_AGE: Final = "600"
ALLOWED_HEADERS: Final = "Authorization, Content-Type, Content-Encoding"
EXPOSED_HEADERS: Final = "Retry-After, X-RateLimit-Reset"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(value), status=status, headers=headers,
                        content_type="application/json")


class Refusal(Exception):
    """A request refused as a whole, with its status, reason and one sentence."""

    def __init__(self, status: int, reason: str, message: str, key: str,
                 retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.key = key
        self.retry_after = retry_after

    def response(self) -> web.Response:
        headers = None
        if self.retry_after is not None:
            seconds = str(self.retry_after)
            # X-RateLimit-Reset is what analytics.js reads on a 429
            headers = {"Retry-After": seconds, "X-RateLimit-Reset": seconds}
        return _json({"error": self.message, "reason": self.reason}, self.status, headers)


class Collector:
    """The endpoints and what they share: keys, rate limiter, CORS policy, metrics and the
    one producer. Holds no state that another collector process would need."""

    def __init__(self, settings: Settings, *, publisher: Publisher | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.keys = WriteKeys.load(settings.collector_write_keys,
                                   settings.collector_write_keys_file)
        self.limiter = RateLimiter(settings.collector_rate_limit,
                                   settings.collector_rate_burst_seconds)
        self.cors = CorsPolicy.parse(settings.collector_cors_origins)
        self.metrics = CollectorMetrics()
        self.publisher = publisher or Publisher(settings, topics(settings))
        self.clock = clock
        self._broker_ok = True

    # -- the app ---------------------------------------------------------------------

    def app(self) -> web.Application:
        # client_max_size bounds the body after aiohttp's gunzip as well (a gzip bomb
        # is cut off at the limit, read in bounded chunks).
        app = web.Application(client_max_size=self.settings.collector_max_body_bytes,
                              middlewares=[self._middleware])
        app.router.add_post(NATIVE_PATH, self._native)
        for path, call in SEGMENT_PATHS.items():
            app.router.add_post(path, self._segment_handler(call))
        for letter, call in {**SHORT_PATHS, "b": "batch"}.items():
            app.router.add_post(f"/v1/{letter}", self._segment_handler(call))
        app.router.add_route("OPTIONS", "/v1/{tail:.*}", self._preflight)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/openapi.json", self._openapi)
        app.router.add_get("/docs", self._docs)
        for path in STATIC_FILES:
            app.router.add_get(path, self._static)
        app.on_startup.append(self._on_startup)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def _on_startup(self, app: web.Application) -> None:
        self.publisher.start()

    async def _on_cleanup(self, app: web.Application) -> None:
        await self.publisher.stop()

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        endpoint = request.match_info.route.resource.canonical if (
            request.match_info.route.resource is not None) else "unmatched"
        try:
            response = await handler(request)
        except Refusal as refusal:
            self.metrics.refused.labels(refusal.key, refusal.reason).inc()
            response = refusal.response()
        except web.HTTPException as exc:  # aiohttp's own 404/405
            response = _json({"error": exc.reason, "reason": "not_found"}, exc.status)
        self._cors_headers(request, response)
        self.metrics.requests.labels(endpoint, str(response.status)).inc()
        self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
        return response

    def _cors_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        origin = request.headers.get("Origin")
        if origin is not None and self.cors.allows(origin):
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
            response.headers["Vary"] = "Origin"

    # -- access ------------------------------------------------------------------------

    def _header_key(self, request: web.Request) -> tuple[str | None, bool]:
        """The key's name from the Authorization header, and whether one was presented."""
        if not self.keys:
            return OPEN_KEY, False
        presented = presented_key(request.headers.get("Authorization"))
        return self.keys.name_of(presented), presented is not None

    def _check_origin(self, request: web.Request, key: str | None) -> None:
        origin = request.headers.get("Origin")
        if origin is not None and not self.cors.allows(origin):
            raise Refusal(403, "origin_not_allowed",
                          f"origin {origin[:100]} may not send here: add it to "
                          "JOURNEY_COLLECTOR_CORS_ORIGINS", key or UNKNOWN_KEY)

    @staticmethod
    def _unauthorized() -> Refusal:
        return Refusal(401, "unauthorized", "a write key is needed: send 'Authorization: "
                       "Bearer KEY' or HTTP Basic with the key as user name", UNKNOWN_KEY)

    async def _read(self, request: web.Request, key: str) -> bytes:
        limit = self.settings.collector_max_body_bytes
        too_large = Refusal(413, "body_too_large", f"the body is larger than {limit} bytes: "
                            "send fewer events per request", key)
        if request.content_length is not None and request.content_length > limit:
            raise too_large
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise too_large from None
        except (HttpProcessingError, web.RequestPayloadError) as exc:
            detail = " ".join(str(exc).split())
            raise Refusal(400, "bad_request", f"the body cannot be read ({detail}): "
                          "check its Content-Encoding", key) from None

    def _admit_rate(self, key: str, events: int) -> None:
        wait = self.limiter.admit(key, events, self.clock())
        if wait is not None:
            raise Refusal(429, "rate_limited", f"write key {key} sent more than "
                          f"{self.limiter.rate:g} events/s: retry after {wait}s", key, wait)

    # -- the endpoints -----------------------------------------------------------------

    async def _native(self, request: web.Request) -> web.Response:
        key, _ = self._header_key(request)
        self._check_origin(request, key)
        if key is None:
            raise self._unauthorized()
        body = await self._read(request, key)
        try:
            events = split_native(body, ndjson=request.content_type in NDJSON_TYPES)
        except EmptyBodyError as exc:
            raise Refusal(400, "bad_request", str(exc), key) from None
        self._admit_rate(key, len(events))
        collected = collect_native(events, source=f"http:{NATIVE_PATH}",
                                   now=datetime.now(UTC))
        return await self._publish(key, len(events), collected, {})

    def _segment_handler(self, call: str) -> Handler:
        async def handle(request: web.Request) -> web.Response:
            return await self._segment(request, call)
        return handle

    async def _segment(self, request: web.Request, call: str) -> web.Response:
        key, presented = self._header_key(request)
        self._check_origin(request, key)
        if key is None and presented:
            raise self._unauthorized()  # a wrong key in the header is not overruled
        body = await self._read(request, key or UNKNOWN_KEY)
        try:
            calls = split_segment(body, batch=call == "batch")
        except EmptyBodyError as exc:
            raise Refusal(400, "bad_request", str(exc), key or UNKNOWN_KEY) from None
        if key is None:  # analytics.js sends the key in the body
            key = self.keys.name_of(calls.write_key)
            if key is None:
                raise self._unauthorized()
        events = max(1, len(calls.items))
        self._admit_rate(key, events)
        collected = collect_segment(calls, call=None if call == "batch" else call,
                                    source=f"http:/v1/{call}", now=datetime.now(UTC))
        return await self._publish(key, events, collected, {"success": True})

    async def _publish(self, key: str, events: int, collected: Collected,
                       extra: dict[str, Any]) -> web.Response:
        try:
            await self.publisher.publish(collected.accepted, collected.dead)
        except BrokerUnavailableError as exc:
            self.limiter.refund(key, events)  # the client sends these again
            if self._broker_ok:  # once per outage, not once per request
                log.warning("collector: answering 503 until Kafka acknowledges again: %s", exc)
                self._broker_ok = False
            retry = self.settings.collector_retry_after
            raise Refusal(503, "broker_unavailable", f"{exc}: send the same request again "
                          f"in {retry}s", key, retry) from None
        if not self._broker_ok:
            log.warning("collector: Kafka acknowledges again")
            self._broker_ok = True
        self.metrics.accepted.labels(key).inc(len(collected.accepted))
        for rejection in collected.rejected:
            self.metrics.rejected.labels(key, rejection.reason).inc()
        return _json({**extra, **collected.answer()})

    async def _preflight(self, request: web.Request) -> web.Response:
        origin = request.headers.get("Origin")
        if origin is None:
            return web.Response(status=204, headers={"Allow": "POST, OPTIONS"})
        self._check_origin(request, UNKNOWN_KEY)
        return web.Response(status=204, headers={
            "Access-Control-Allow-Methods": "POST, OPTIONS",
            "Access-Control-Allow-Headers": ALLOWED_HEADERS,
            "Access-Control-Max-Age": PREFLIGHT_MAX_AGE,
        })

    async def _health(self, request: web.Request) -> web.Response:
        connected = self.publisher.connected
        return _json({"ok": connected, "kafka": connected,
                      "last_send_ok": self.publisher.healthy}, 200 if connected else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        key, _ = self._header_key(request)
        if key is None:
            raise self._unauthorized()
        return web.Response(body=self.metrics.render(),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _openapi(self, request: web.Request) -> web.Response:
        return web.Response(body=openapi_json(), content_type="application/json")

    async def _docs(self, request: web.Request) -> web.Response:
        return web.Response(body=docs_page(), content_type="text/html", charset="utf-8")

    async def _static(self, request: web.Request) -> web.StreamResponse:
        name, content_type = STATIC_FILES[request.path]
        path = STATIC_DIR / name
        if not path.is_file():
            return _json({"error": f"{request.path} is not part of this build",
                          "reason": "not_found"}, 404)
        return web.FileResponse(path, headers={"Content-Type": content_type,
                                               "Cache-Control": "public, max-age=300"})
