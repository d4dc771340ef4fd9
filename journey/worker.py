"""Runs the stream-processing worker in this process, or finds the one already running."""

from __future__ import annotations

import asyncio
import logging
import urllib.error
import urllib.request
from http import HTTPStatus
from typing import Any

import orjson

from journey.child import ChildProcess
from journey.errors import ConfigurationError, ServiceUnavailableError
from journey.settings import Settings

UNAUTHORIZED = HTTPStatus.UNAUTHORIZED


def settings_env(settings: Settings) -> dict[str, str]:
    """The JOURNEY_* variables that reproduce `settings` in a child process."""
    return {f"JOURNEY_{name.upper()}": str(value)
            for name, value in settings.model_dump().items() if value is not None}


def run_worker(settings: Settings, *, loglevel: str = "warn") -> None:
    """Create the topics, then run the Faust worker until SIGINT/SIGTERM."""
    from faust.worker import Worker

    from projections.friction.config import load_config
    from streams.app import create_engine, prepare_topics
    from streams.web import check_exposure

    # a wrong rules file or an open API is one line of error, before anything starts
    check_exposure(settings)
    rules = load_config(settings.friction_config)
    asyncio.run(prepare_topics(settings))
    engine = create_engine(settings, rules)
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    worker = Worker(engine.app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()


def worker_headers(settings: Settings) -> dict[str, str]:
    """What a client of the worker's HTTP API sends: the first of JOURNEY_API_TOKENS."""
    from projections.clickhouse import runner

    return runner.worker_headers(settings.api_token_list)


def refused_token(settings: Settings) -> ConfigurationError:
    from projections.clickhouse import runner

    return runner.refused_token(settings.worker_url, settings.api_token_list)


def worker_status(settings: Settings, timeout: float = 2.0) -> dict[str, Any] | None:
    """The running worker's /status, or None when no worker answers.

    Raises ConfigurationError when a worker answers but refuses the token.
    """
    request = urllib.request.Request(f"{settings.worker_url}/status",
                                     headers=worker_headers(settings))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            data: dict[str, Any] = orjson.loads(r.read())
            return data
    except urllib.error.HTTPError as exc:
        if exc.code == UNAUTHORIZED:
            raise refused_token(settings) from exc
        return None
    except (urllib.error.URLError, OSError, ValueError):
        return None


def worker_health(settings: Settings, timeout: float = 2.0) -> tuple[int, dict[str, Any]] | None:
    """The status code and JSON body of the worker's /health (503 included), or None
    when no worker answers."""
    request = urllib.request.Request(f"{settings.worker_url}/health",
                                     headers=worker_headers(settings))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, orjson.loads(r.read())
    except urllib.error.HTTPError as exc:
        if exc.code == UNAUTHORIZED:
            raise refused_token(settings) from exc
        try:
            return exc.code, orjson.loads(exc.read())
        except ValueError:
            return None
    except (urllib.error.URLError, OSError, ValueError):
        return None


def require_worker(settings: Settings) -> dict[str, Any]:
    status = worker_status(settings)
    if status is None:
        raise ServiceUnavailableError(
            f"no worker answers at {settings.worker_url}: start one with 'journey worker' "
            "(or set JOURNEY_WORKER_HOST/JOURNEY_WORKER_PORT)"
        )
    return status


class WorkerProcess(ChildProcess):
    """A worker started as a child process (for the demo and the integration tests)."""

    def __init__(self, settings: Settings, env: dict[str, str] | None = None) -> None:
        super().__init__("worker", settings.home / "worker.log", env)
        self.settings = settings

    def start(self, timeout: float = 120.0) -> None:
        self.spawn(self.ready, timeout)

    def ready(self) -> bool:
        """The worker answers and its warehouse is open (healthy or not otherwise)."""
        health = worker_health(self.settings, timeout=1)
        return health is not None and bool(health[1].get("warehouse"))

