"""Which HTTP stack for the collector: aiohttp against Starlette on uvicorn, same handler.

    .venv/bin/pip install starlette uvicorn httptools uvloop   # only for this comparison
    .venv/bin/python bench/http_stacks.py [--requests 3000] [--concurrency 32]

Each server runs in a process of its own and answers POSTs of 100-event JSON arrays the
way the collector does without Kafka: read the body, split it, check every event with
the validator's codec, answer the verdict as JSON. The client (another process) sends
the same requests to each in turn. Two handlers: `validate` (the real work) and `read`
(read the body and answer at once: the stack's own cost). Results go to
docs/adr/0003-http-collector.md.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.ports import free_port  # noqa: E402

BATCH = 100


def events(n: int) -> bytes:
    when = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    return orjson.dumps([{
        "event_id": str(uuid.uuid4()), "schema_version": 1, "type": "page_view",
        "occurred_at": when, "channel": "web", "customer_id": f"c-{i % 50}",
        "properties": {"url": f"https://shop.test/p/{i}"}} for i in range(n)])


def verdict(body: bytes) -> bytes:
    from projections.collect import collect_native, split_native

    collected = collect_native(split_native(body, ndjson=False), source="http:/bench",
                               now=datetime.now(UTC))
    return orjson.dumps(collected.answer())


READ_ANSWER = b'{"accepted":0,"rejected":[]}'


def serve_aiohttp(port: int, mode: str, loop_kind: str) -> None:
    from aiohttp import web

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        out = verdict(body) if mode == "validate" else READ_ANSWER
        return web.Response(body=out, content_type="application/json")

    app = web.Application(client_max_size=1 << 20)
    app.router.add_post("/v1/touchpoints", handle)
    if loop_kind == "uvloop":
        import uvloop
        uvloop.install()
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def serve_starlette(port: int, mode: str, loop_kind: str) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def handle(request: Request) -> Response:
        body = await request.body()
        out = verdict(body) if mode == "validate" else READ_ANSWER
        return Response(out, media_type="application/json")

    app = Starlette(routes=[Route("/v1/touchpoints", handle, methods=["POST"])])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="error", access_log=False,
                loop=loop_kind, http="httptools")


async def load(port: int, bodies: list[bytes], concurrency: int) -> tuple[float, list[float]]:
    import aiohttp

    url = f"http://127.0.0.1:{port}/v1/touchpoints"
    latencies: list[float] = []
    queue = list(bodies)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(20):  # warm up
            async with session.post(url, data=bodies[0]) as r:
                await r.read()

        async def client() -> None:
            while queue:
                body = queue.pop()
                began = time.perf_counter()
                async with session.post(url, data=body,
                                        headers={"Content-Type": "application/json"}) as r:
                    await r.read()
                    if r.status != 200:
                        raise RuntimeError(f"status {r.status}")
                latencies.append(time.perf_counter() - began)

        began = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        return time.perf_counter() - began, latencies


def wait_listening(port: int) -> None:
    import socket

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--serve", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        stack, port, mode, loop_kind = args.serve
        (serve_aiohttp if stack == "aiohttp" else serve_starlette)(int(port), mode, loop_kind)
        return
    bodies = [events(BATCH) for _ in range(args.requests)]
    print(f"{args.requests} requests of {BATCH} events, {args.concurrency} concurrent "
          "connections, one server process at a time")
    print("| stack | loop | handler | requests/s | events/s | p50 ms | p99 ms |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: |")
    for mode in ("read", "validate"):
        for stack, loop_kind in (("aiohttp", "asyncio"), ("starlette", "asyncio"),
                                 ("aiohttp", "uvloop"), ("starlette", "uvloop")):
            port = free_port()
            server = subprocess.Popen([sys.executable, __file__, "--serve", stack, str(port),
                                       mode, loop_kind], cwd=ROOT)
            try:
                wait_listening(port)
                seconds, lat = asyncio.run(load(port, bodies, args.concurrency))
            finally:
                server.terminate()
                server.wait(10)
            lat.sort()
            p99 = lat[int(len(lat) * 0.99) - 1]
            print(f"| {stack} | {loop_kind} | {mode} | {len(bodies) / seconds:,.0f} | "
                  f"{len(bodies) * BATCH / seconds:,.0f} | {statistics.median(lat) * 1e3:.1f} "
                  f"| {p99 * 1e3:.1f} |", flush=True)


if __name__ == "__main__":
    main()
