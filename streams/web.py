"""The worker's HTTP API: health, metrics, counters and read-only queries on its warehouse.

Bound beyond loopback, every endpoint wants `Authorization: Bearer <token>` with one of
JOURNEY_API_TOKENS (compared in constant time); without tokens the worker does not start
there. With tokens set, they are required on loopback too.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import faust
import orjson
from aiohttp import web
from faust.web import Request, Response, View

from projections.errors import ConfigurationError

if TYPE_CHECKING:
    from streams.app import Engine
    from streams.settings import Settings


def is_loopback(host: str) -> bool:
    """Whether every address `host` names is on this machine's loopback interface."""
    name = host.strip().strip("[]")
    if not name:
        return False  # every interface
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        pass
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(name, None)}
    except OSError:
        return False  # unknown: assume it reaches beyond this machine
    return bool(addresses) and all(
        ipaddress.ip_address(str(a).split("%")[0]).is_loopback for a in addresses)


def check_exposure(settings: Settings) -> None:
    """Refuse to serve the API beyond loopback without tokens (one-line error)."""
    if settings.api_token_list or is_loopback(settings.worker_host):
        return
    raise ConfigurationError(
        f"the worker would serve its HTTP API on {settings.worker_host} (beyond this machine) "
        "without authentication: set JOURNEY_API_TOKENS=<token>[,<token>...] or "
        "JOURNEY_WORKER_HOST=127.0.0.1"
    )


def _digest(token: str | bytes) -> bytes:
    raw = token.encode() if isinstance(token, str) else token
    return hashlib.sha256(raw).digest()


def bearer_allowed(header: str | None, tokens: Sequence[str]) -> bool:
    """Whether an Authorization header carries one of `tokens`; True when there are none.

    Every token is compared, each in constant time over equal-length digests, so neither
    the time nor the answer depends on where a guess first differs.
    """
    if not tokens:
        return True
    scheme, _, credential = (header or "").strip().partition(" ")
    offered = _digest(credential.strip()) if scheme.lower() == "bearer" else _digest("")
    matched = False
    for token in tokens:
        matched |= hmac.compare_digest(offered, _digest(token))
    return matched and scheme.lower() == "bearer" and bool(credential.strip())


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def auth_middleware(tokens: Sequence[str]) -> Any:
    """An aiohttp middleware that answers 401 unless the request carries a token; it
    covers every route of the worker's web server, Faust's own included."""

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if bearer_allowed(request.headers.get("Authorization"), tokens):
            return await handler(request)
        return web.json_response(
            {"error": "missing or wrong bearer token: send 'Authorization: Bearer <token>' "
                      "with one of the worker's JOURNEY_API_TOKENS"},
            status=401, headers={"WWW-Authenticate": 'Bearer realm="journey"'})

    return authenticate


def _json(view: View, value: Any, status: int = 200) -> Response:
    # orjson: datetimes and decimals from ClickHouse rows serialise without fuss
    return view.bytes(orjson.dumps(value, default=str), content_type="application/json",
                      status=status)


def install_web(app: faust.App, engine: Engine) -> None:
    from projections.analysis.funnel import funnel_rows, shape_funnel
    from projections.analysis.kpis import rule_deadlines
    from projections.analysis.requests import (
        AnalysisRequestError,
        analysis_request,
        funnel_request,
    )
    from projections.clickhouse.builders import build
    from projections.clickhouse.runner import Answer, QueryFailedError, Runner
    from projections.clickhouse.sql import Statement
    from projections.errors import JourneyError

    async def run(view: View, statement: Statement) -> Answer | Response:
        """The answer of the one runner, on this worker's own warehouse, or an error."""
        if engine.warehouse is None:
            return _json(view, {"error": "the warehouse is still opening; retry"}, 503)
        runner = Runner(warehouse=engine.warehouse)
        try:
            return await asyncio.to_thread(runner.run, statement)
        except QueryFailedError as exc:  # the caller's SQL or options: theirs to read
            return _json(view, {"error": str(exc)}, 400)
        except JourneyError as exc:  # the warehouse went away
            return _json(view, {"error": str(exc)}, 503)

    async def answer(view: View, statement: Statement) -> Response:
        found = await run(view, statement)
        if not isinstance(found, Answer):  # an error already answered
            return found
        return _json(view, {"columns": found.columns, "types": found.types, "rows": found.rows})

    tokens = engine.settings.api_token_list
    if tokens:
        # aiohttp's application under Faust's web driver: its middlewares see every route
        server: Any = app.web
        server.web_app.middlewares.append(auth_middleware(tokens))

    @app.page("/health")
    class Health(View):
        """200 when every check passed in the latest round, else 503 with the reasons."""

        async def get(self, request: Request) -> Response:
            healthy, body = engine.health.report()
            body["warehouse"] = engine.warehouse is not None  # ready to answer queries
            return _json(self, body, 200 if healthy else 503)

    @app.page("/metrics")
    class Metrics(View):
        """The counters and the health checks in Prometheus text format."""

        async def get(self, request: Request) -> Response:
            from streams.metrics import exposition

            payload, content_type = exposition(engine.metrics, engine.health)
            return self.bytes(payload, headers={"Content-Type": content_type})

    @app.page("/status")
    class Status(View):
        async def get(self, request: Request) -> Response:
            s = engine.settings
            return _json(self, {
                "app_id": s.app_id,
                "bootstrap": s.bootstrap,
                "warehouse": s.warehouse_dsn,
                "topics": {t.name: t.partitions for t in engine.topics.all()},
                "counters": engine.metrics.snapshot(),
            })

    @app.page("/query")
    class Query(View):
        async def post(self, request: Request) -> Response:
            try:
                body = orjson.loads(await self.read_request_content(request))
                sql = body["sql"]
                params = body.get("parameters") or {}
                if not isinstance(sql, str) or not isinstance(params, dict):
                    raise TypeError("sql must be a string and parameters an object")
            except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
                return _json(self, {"error": f"bad request: {exc}"}, 400)
            return await answer(self, Statement(sql, params))

    @app.page("/analysis/funnel")
    class Funnel(View):
        """GET /analysis/funnel?step=site_visit&step=purchase[revenue>50]&window=7d
        &breakdown=channel&order=strict&exclude=refund@1-2: per step people,
        conversions and times to convert, per breakdown value."""

        async def get(self, request: Request) -> Response:
            query: Any = request.query  # aiohttp's MultiDict: step and exclude repeat
            try:
                spec = funnel_request(dict(query), query.getall("step", []),
                                      query.getall("exclude", []))
            except AnalysisRequestError as exc:
                return _json(self, {"error": str(exc)}, 400)
            found = await run(self, build(spec))
            if not isinstance(found, Answer):
                return found
            columns, rows = funnel_rows(spec, shape_funnel(spec, found.rows))
            return _json(self, {"columns": columns, "rows": rows})

    # SLA compliance in /analysis/kpis uses this worker's sla_breach deadlines.
    deadlines, default_deadline = rule_deadlines(engine.friction_config.sla_breach)
    kpi_deadlines = {"deadlines": deadlines, "default_deadline": default_deadline}

    @app.page("/analysis/{name}")
    class Analysis(View):
        """GET /analysis/paths?end_at=purchase&top=10, /analysis/map, /analysis/retention,
        /analysis/flows, /analysis/customer?customer=ID: the CLI's analyses as JSON."""

        async def get(self, request: Request, name: str) -> Response:
            try:
                spec = analysis_request(name, dict(request.query),
                                        kpi_deadlines if name == "kpis" else None)
            except AnalysisRequestError as exc:
                return _json(self, {"error": str(exc)}, 400)
            return await answer(self, build(spec))
