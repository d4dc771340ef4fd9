"""The worker's HTTP API: health, counters and read-only queries on its warehouse."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import faust
import orjson
from faust.web import Request, Response, View

if TYPE_CHECKING:
    from streams.app import Engine


def _json(view: View, value: Any, status: int = 200) -> Response:
    # orjson: datetimes and decimals from ClickHouse rows serialise without fuss
    return view.bytes(orjson.dumps(value, default=str), content_type="application/json",
                      status=status)


def install_web(app: faust.App, engine: Engine) -> None:
    from projections.clickhouse.api import AnalysisRequestError, analysis_sql, funnel_request
    from projections.clickhouse.cx import rule_deadlines
    from projections.clickhouse.funnels import funnel_query, funnel_rows, shape_funnel
    from projections.clickhouse.queries import jsonable_rows
    from projections.clickhouse.readonly import QueryRejectedError, run_readonly

    async def answer(view: View, sql: str, params: dict[str, Any]) -> Response:
        if engine.warehouse is None:
            return _json(view, {"error": "the warehouse is still opening; retry"}, 503)
        try:
            result = await asyncio.to_thread(run_readonly, engine.warehouse, sql, params)
        except QueryRejectedError as exc:
            return _json(view, {"error": str(exc)}, 400)
        except Exception as exc:  # ClickHouse errors are the caller's to read
            return _json(view, {"error": f"{type(exc).__name__}: {exc}"}, 400)
        return _json(view, {"columns": list(result.columns), "types": list(result.types),
                            "rows": jsonable_rows(result)})

    @app.page("/health")
    class Health(View):
        async def get(self, request: Request) -> Response:
            return _json(self, {"ok": True, "warehouse": engine.warehouse is not None})

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
            return await answer(self, sql, params)

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
            if engine.warehouse is None:
                return _json(self, {"error": "the warehouse is still opening; retry"}, 503)
            sql, params = funnel_query(spec)
            try:
                result = await asyncio.to_thread(run_readonly, engine.warehouse, sql, params)
            except Exception as exc:  # ClickHouse errors are the caller's to read
                return _json(self, {"error": f"{type(exc).__name__}: {exc}"}, 400)
            columns, rows = funnel_rows(spec, shape_funnel(spec, result.rows))
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
                sql, params = analysis_sql(name, dict(request.query),
                                           kpi_deadlines if name == "kpis" else None)
            except AnalysisRequestError as exc:
                return _json(self, {"error": str(exc)}, 400)
            return await answer(self, sql, params)
