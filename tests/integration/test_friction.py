"""The friction detectors on a real broker and worker: exactly the planted friction."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from journey.friction_plan import PUSH_AFTER_DAYS, PlantedFriction, plant_friction
from journey.sdk import TouchpointProducer
from journey.settings import Settings
from journey.worker import WorkerProcess
from projections.clickhouse.runner import run_query
from schemas.friction import FrictionEvent
from tests.integration.helpers import read_topic, wait_for

pytestmark = pytest.mark.integration


def stored_friction(settings: Settings, customers: set[str]) -> list[list[Any]]:
    sql = ("SELECT friction_id, rule, kind, severity, customer_key, evidence FROM friction FINAL "
           "WHERE has({keys:Array(String)}, customer_key) ORDER BY friction_id")
    return [list(r) for r in run_query(settings, sql, {"keys": sorted(customers)})[1]]


@pytest.fixture(scope="module")
def planted() -> PlantedFriction:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=PUSH_AFTER_DAYS + 2)
    return plant_friction(start, rounds=2, partitions=4, seed=11)


async def test_the_detectors_find_exactly_the_planted_friction(
    settings: Settings, worker: WorkerProcess, planted: PlantedFriction
) -> None:
    assert settings.topic_partitions == 4
    expected = {e.friction_id: e for e in planted.expected}
    assert len(expected) == len(planted.expected), "planted frictions must be distinct"
    assert set(planted.by_rule()) == {
        "repeat_contact", "sla_breach", "unreachable_help", "escalation", "failed_outcome",
        "checkout_abandoned", "negative_feedback", "channel_hopping",
        "cancellation_after_contact",
    }
    async with TouchpointProducer(settings) as producer:
        await producer.send_many(planted.events)
        await producer.flush()

    def all_stored() -> bool:
        return len(stored_friction(settings, planted.customers)) >= len(expected)

    await wait_for(all_stored, 120, "the planted friction in the friction table")
    rows = stored_friction(settings, planted.customers)
    found = {r[0]: r for r in rows}
    missing = [expected[i] for i in set(expected) - set(found)]
    extra = [found[i] for i in set(found) - set(expected)]
    assert not missing and not extra, {"missing": missing, "extra": extra}
    for friction_id, row in found.items():
        e = expected[friction_id]
        assert (row[1], row[2], row[3], row[4]) == (e.rule, e.kind, e.severity,
                                                    e.customer_key), row
        assert sorted(row[5]) == sorted(e.evidence)

    # The topic carries the same friction, each exactly once, in the EVENTS.md format.
    records = await read_topic(settings, settings.topic_friction)
    ours = [FrictionEvent.model_validate(orjson.loads(r.value)) for r in records
            if r.key is not None and r.key.decode() in planted.customers]
    ids = [f.friction_id for f in ours]
    assert sorted(ids) == sorted(expected), "each planted friction once on the topic"
    for event in ours:
        assert event.customer_key == expected[event.friction_id].customer_key
        assert event.stage, "the stage at detection is filled in"
        assert event.message


async def test_a_deadline_fires_without_a_later_event_of_that_customer(
    settings: Settings, worker: WorkerProcess, planted: PlantedFriction
) -> None:
    # runs after the test above: the silent customers' breaches came from other keys'
    # events moving their partition's watermark
    silent = {e.customer_key for e in planted.expected
              if e.kind in ("resolution", "checkout")}
    assert silent
    rows = stored_friction(settings, silent)
    assert {(r[1], r[2]) for r in rows} == {("sla_breach", "resolution"),
                                           ("checkout_abandoned", "checkout")}
    last_event: dict[str, datetime] = {}
    for event in planted.events:
        if event["customer_id"] in silent:
            last_event[event["customer_id"]] = datetime.fromisoformat(event["occurred_at"])
    sql = ("SELECT customer_key, toUnixTimestamp64Milli(max(occurred_at)) FROM friction FINAL "
           "WHERE has({keys:Array(String)}, customer_key) GROUP BY customer_key")
    for key, occurred_ms in run_query(settings, sql, {"keys": sorted(silent)})[1]:
        assert int(occurred_ms) > last_event[key].timestamp() * 1000, \
            "a breach is dated at its deadline, after the customer's last event"
