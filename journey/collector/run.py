"""Runs the collector in this process until SIGINT/SIGTERM, or as a child process."""

from __future__ import annotations

import asyncio
import logging
import signal
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import orjson

from journey.child import ChildProcess
from journey.collector.access import WriteKeys, is_loopback
from journey.errors import ConfigurationError, ServiceUnavailableError
from journey.settings import Settings


def check_binding(settings: Settings) -> str:
    """The one start-up line about who may send; refuses an open collector beyond loopback."""
    keys = WriteKeys.load(settings.collector_write_keys, settings.collector_write_keys_file)
    where = f"{settings.collector_host}:{settings.collector_port}"
    if keys:
        return (f"collector: listening on {where} with {len(keys.by_digest)} write key(s); "
                f"Kafka at {settings.bootstrap}")
    if not is_loopback(settings.collector_host):
        raise ConfigurationError(
            f"JOURNEY_COLLECTOR_HOST={settings.collector_host} reaches beyond this machine "
            "and no write keys are set: set JOURNEY_COLLECTOR_WRITE_KEYS (or "
            "JOURNEY_COLLECTOR_WRITE_KEYS_FILE), or bind 127.0.0.1")
    return (f"collector: no write keys set, so it listens on {where} (loopback only) without "
            f"authentication; Kafka at {settings.bootstrap}")


async def serve(settings: Settings, announce: Callable[[str], None]) -> None:
    from aiohttp import web

    from journey.collector.app import Collector

    line = check_binding(settings)
    collector = Collector(settings)
    runner = web.AppRunner(collector.app(), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, settings.collector_host, settings.collector_port,
                       reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ServiceUnavailableError(
            f"cannot listen on {settings.collector_host}:{settings.collector_port} "
            f"({exc.strerror or exc}): stop what uses it or set JOURNEY_COLLECTOR_PORT"
        ) from None
    announce(line)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def run_collector(settings: Settings, announce: Callable[[str], None],
                  loglevel: str = "warning") -> None:
    logging.basicConfig(level=loglevel.upper(), format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    asyncio.run(serve(settings, announce))


def collector_health(settings: Settings, host: str | None = None,
                     timeout: float = 1.0) -> dict[str, Any] | None:
    """The collector's /health answer (also a 503 one), None when nothing answers."""
    url = f"http://{host or settings.collector_host}:{settings.collector_port}/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            data: dict[str, Any] = orjson.loads(r.read())
            return data
    except urllib.error.HTTPError as exc:
        try:
            answer: dict[str, Any] = orjson.loads(exc.read())
        except ValueError:
            return None
        return answer
    except (urllib.error.URLError, OSError, ValueError):
        return None


class CollectorProcess(ChildProcess):
    """`journey collector` as a child process (for tests and benchmarks)."""

    def __init__(self, settings: Settings, env: dict[str, str]) -> None:
        super().__init__("collector", settings.home / f"collector-{settings.collector_port}.log",
                         env)
        self.settings = settings

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.collector_port}"

    def start(self, timeout: float = 60.0, *, wait_for_kafka: bool = True) -> None:
        def ready() -> bool:
            health = collector_health(self.settings, "127.0.0.1")
            return health is not None and bool(health.get("kafka") or not wait_for_kafka)

        self.spawn(ready, timeout, poll=0.2)
