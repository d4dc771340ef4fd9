"""The collector fuzzed from its own OpenAPI document (schemathesis, positive and negative
cases): no request makes it fail (500), every answer is one the document lists, and every
event it answered for is on Kafka - the accepted on the ingest topic, the rejected on the DLQ.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from journey.collector.openapi import openapi_json
from journey.collector.run import CollectorProcess
from journey.settings import Settings
from journey.worker import settings_env
from tests.integration.helpers import read_topic
from tests.ports import free_port

pytestmark = pytest.mark.integration

KEY = "wk_fuzz"
SCHEMA = schemathesis.openapi.from_dict(orjson.loads(openapi_json())).include(method="POST")
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
# What the collector said it did with the events of every fuzzed request.
TALLY: Counter[str] = Counter()


@schemathesis.serializer("application/x-ndjson")
def _ndjson(ctx: Any, value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode()
    return json.dumps(value).encode()  # not orjson: fuzzed integers exceed 64 bits


@schemathesis.serializer("text/plain")
def _text(ctx: Any, value: Any) -> bytes:
    # analytics.js sends JSON as text/plain; the default would send Python's repr
    if isinstance(value, str):
        return value.encode()
    return json.dumps(value).encode()


@pytest.fixture(scope="module")
def fuzzed(kafka: str, settings: Settings) -> Iterator[tuple[CollectorProcess, Settings]]:
    """A collector writing to topics of its own, so that they hold only what it answered."""
    run = uuid.uuid4().hex[:6]
    mine = settings.model_copy(update={
        "topic_ingest": f"fuzz-{run}.ingest", "topic_dlq": f"fuzz-{run}.dlq",
        "collector_port": free_port(), "collector_write_keys": f"fuzz={KEY}",
        "collector_rate_limit": 0.0})
    proc = CollectorProcess(mine, settings_env(mine))
    proc.start()
    yield proc, mine
    proc.stop()


@SCHEMA.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_answer_outside_the_document(case: Any, fuzzed: tuple[CollectorProcess,
                                                                 Settings]) -> None:
    proc, _ = fuzzed
    response = case.call_and_validate(base_url=proc.url, checks=CHECKS,
                                      headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code not in (500, 503), response.text[:300]
    if response.status_code == 200:
        answer = response.json()
        TALLY["accepted"] += answer["accepted"]
        TALLY["rejected"] += len(answer["rejected"])
        TALLY["requests"] += 1


async def test_every_event_answered_for_is_on_kafka(
        fuzzed: tuple[CollectorProcess, Settings]) -> None:
    _, mine = fuzzed
    assert TALLY["requests"] > 50, TALLY  # the fuzzing above did reach the endpoints
    ingest = await read_topic(mine, mine.topic_ingest, timeout=30)
    dlq = await read_topic(mine, mine.topic_dlq, timeout=30)
    print(f"\nfuzz: {TALLY['requests']} requests answered 200, {TALLY['accepted']} events "
          f"accepted, {TALLY['rejected']} rejected")
    assert (len(ingest), len(dlq)) == (TALLY["accepted"], TALLY["rejected"])
