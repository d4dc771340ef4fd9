"""The journey projection: identity links and per-customer journeys, fed to ClickHouse.

Partitioning: `touchpoints` is keyed by customer_id, or by anonymous_id before
identification, and the journey inbox (link, merge and forwarded touch commands)
is keyed the same way with the same partition count, so the journey of a key and
the link of an anonymous id always live in the partition of that key - on
whichever worker owns it. An anonymous event whose id is already linked is
forwarded to its customer's partition; an identify sends a link command to the
anonymous id's partition, which moves the anonymous journey to the customer.

Runtime: a `TransactionalService` (its own consumer group `<projection id>-journeys`
over `touchpoints` and the inbox, the range assignor giving one worker partition p of
both), not a Faust agent. Per batch, ONE Kafka transaction carries the journeys,
transitions and identities rows, the inbox commands, the changed states (compacted
`<projection id>.journey-state`) and the consumed offsets of both topics, so a
touchpoint, a link or a merge is applied to a journey exactly once whatever crashes
between two lines (docs/adr/0002-correct-for-any-producer.md).

Store keys: `j<person key>` -> JourneyState JSON, `l<anonymous id>` -> IdentityLinks
JSON.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import faust
import orjson

from projections.identity import IdentityLinks, LinkOutcome, link_identity
from projections.journey import (
    JourneyConfig,
    JourneyState,
    Transition,
    apply_touchpoint,
    blank_journey,
    merge_journeys,
)
from schemas.codec import decode_stored_touchpoint
from schemas.touchpoint import Touchpoint
from streams.batch import TransactionalService, run_in_worker, transactional_id
from streams.kafka import RangePartitionAssignor, Record
from streams.metrics import Metrics
from streams.settings import Settings
from streams.store import PartitionStore
from streams.topics import Topics

log = logging.getLogger(__name__)


def journey_row(state: JourneyState, *, deleted: bool = False, version: int | None = None,
                data: dict[str, Any] | None = None) -> dict[str, Any]:
    """A `journeys` table row for the state (`data`: its to_dict(), when already made)."""
    data = data if data is not None else state.to_dict()
    return {
        "customer_key": state.customer_key,
        "stage": data["stage"],
        "first_seen": data["first_seen"],
        "last_seen": data["last_seen"],
        "touchpoints": state.touchpoints,
        "by_type": data["by_type"],
        "by_channel": data["by_channel"],
        "purchases": state.purchases,
        "revenue": data["revenue"],
        "refunds": data["refunds"],
        "open_cases": data["open_cases"],
        "last_csat": state.last_csat.score if state.last_csat else None,
        "last_nps": state.last_nps.score if state.last_nps else None,
        "anonymous_ids": sorted(state.anonymous_ids),
        "recent": orjson.dumps(data["recent"]).decode(),
        "version": version if version is not None else state.version,
        "is_deleted": 1 if deleted else 0,
    }


def transition_row(transition: Transition, version: int, *, deleted: bool) -> dict[str, Any]:
    row = transition.to_dict()
    row["from_stage"] = row["from_stage"] or ""
    row["from_type"] = row["from_type"] or ""
    row["version"] = version
    row["is_deleted"] = 1 if deleted else 0
    return row


def identity_row(links: IdentityLinks) -> dict[str, Any]:
    return {
        "anonymous_id": links.anonymous_id,
        "customer_id": links.customer_id,
        "linked_at": links.linked_at.isoformat(),
        "event_id": links.event_id,
        "conflicts": links.conflicts,
        # every claim raises the version, so the newest row of an id wins
        "version": sum(links.claims.values()) + links.unlisted_claims,
    }


@dataclass
class _Batch:
    """What one batch changed: states to save once, rows and commands to send."""

    journeys: dict[str, JourneyState | None] = field(default_factory=dict)
    links: dict[str, IdentityLinks] = field(default_factory=dict)
    partition: dict[str, int] = field(default_factory=dict)  # key -> its partition
    out: list[Record] = field(default_factory=list)
    tally: Counter[str] = field(default_factory=Counter)


JOURNEY_PREFIX = b"j"
LINK_PREFIX = b"l"


def journey_group(settings: Settings) -> str:
    """Per generation, so a replay projects afresh."""
    return f"{settings.projection_id}-journeys"


class JourneyProjection(TransactionalService):
    """The wiring of the pure journey and identity code to partition stores and topics."""

    name = "journey projection"

    def __init__(self, settings: Settings, topics: Topics, metrics: Metrics,
                 config: JourneyConfig | None = None) -> None:
        group = journey_group(settings)
        super().__init__(
            settings.bootstrap, sources=[topics.touchpoints.name, topics.journey_inbox.name],
            group_id=group, transactional_id=transactional_id(group, settings.worker_port),
            client_id=f"{settings.projection_id}-journeys",
            batch_size=settings.validator_batch_size, changelog=topics.journey_state.name,
            store_root=settings.worker_dir / settings.projection_id / "journeys")
        self.settings = settings
        self.topics = topics
        self.metrics = metrics
        self.config = config or JourneyConfig()

    def consumer_options(self) -> dict[str, Any]:
        # Co-partitioned sources: partition p of both topics must go to one consumer.
        return {"partition_assignment_strategy": (RangePartitionAssignor,)}

    # -- state access, coalesced per batch ------------------------------------------
    def _store(self, batch: _Batch, key: str) -> PartitionStore:
        return self.stores[batch.partition[key]]

    def _journey(self, batch: _Batch, key: str) -> JourneyState | None:
        if key in batch.journeys:
            return batch.journeys[key]
        stored = self._store(batch, key).get(JOURNEY_PREFIX + key.encode())
        return None if stored is None else JourneyState.from_dict(orjson.loads(stored))

    def _link(self, batch: _Batch, anonymous_id: str) -> IdentityLinks | None:
        if anonymous_id in batch.links:
            return batch.links[anonymous_id]
        stored = self._store(batch, anonymous_id).get(LINK_PREFIX + anonymous_id.encode())
        return None if stored is None else IdentityLinks.from_dict(orjson.loads(stored))

    def _send(self, batch: _Batch, topic: str, key: str, row: dict[str, Any]) -> None:
        batch.out.append(Record(topic, key.encode(), orjson.dumps(row)))

    def _emit_update(self, batch: _Batch, key: str, state: JourneyState,
                     added: tuple[Transition, ...], retracted: tuple[Transition, ...],
                     retract_version: int | None = None) -> None:
        batch.journeys[key] = state
        topic = self.topics.journey_transitions.name
        for t in retracted:
            version = retract_version if retract_version is not None else state.version
            self._send(batch, topic, t.customer_key, transition_row(t, version, deleted=True))
        for t in added:
            self._send(batch, topic, key, transition_row(t, state.version, deleted=False))
        batch.tally["transitions"] += len(added)
        batch.tally["retracted"] += len(retracted)

    # -- the three things that can happen to a key --------------------------------
    def apply(self, batch: _Batch, key: str, tp: Touchpoint) -> None:
        update = apply_touchpoint(self._journey(batch, key), tp, self.config, customer_key=key)
        if update.duplicate:
            batch.tally["duplicates"] += 1
            return
        batch.tally["applied"] += 1
        self._emit_update(batch, key, update.state, update.transitions, update.retracted)

    def link(self, batch: _Batch, anonymous_id: str, identify: Touchpoint) -> None:
        links, outcome = link_identity(self._link(batch, anonymous_id), identify)
        batch.links[anonymous_id] = links
        batch.tally[f"identity_{outcome.value}"] += 1
        self._send(batch, self.topics.identity_links.name, anonymous_id, identity_row(links))
        if outcome is not LinkOutcome.LINKED:
            # CONFLICT keeps the first owner; RELINKED follows the earlier claim for
            # future events, but what was already folded into the previous owner stays.
            return
        anonymous = self._journey(batch, anonymous_id)
        if anonymous is None:
            return
        command = {"command": "merge", "state": anonymous.to_dict()}
        self._send(batch, self.topics.journey_inbox.name, links.customer_id, command)
        self._send(batch, self.topics.journey_states.name, anonymous_id,
                   journey_row(anonymous, deleted=True, version=anonymous.version + 1))
        batch.journeys[anonymous_id] = None

    def merge(self, batch: _Batch, key: str, anonymous: JourneyState) -> None:
        # Nothing known of the customer yet: the anonymous journey becomes theirs, merged
        # into an empty one so the customer's chain of stages starts at the start.
        customer = self._journey(batch, key) or blank_journey(key, anonymous.first_seen)
        update = merge_journeys(customer, anonymous, self.config)
        self._emit_update(batch, key, update.state, update.transitions, update.retracted,
                          retract_version=update.state.version + 1)
        batch.tally["merged"] += 1

    # -- routing ------------------------------------------------------------------
    def on_touchpoint(self, batch: _Batch, tp: Touchpoint, raw: bytes) -> None:
        if tp.customer_id is not None:
            self.apply(batch, tp.customer_id, tp)
            if tp.type == "identify" and tp.anonymous_id is not None:
                command = {"command": "link", "touchpoint": orjson.Fragment(raw)}
                self._send(batch, self.topics.journey_inbox.name, tp.anonymous_id, command)
            return
        anonymous_id = tp.anonymous_id or ""
        links = self._link(batch, anonymous_id)
        if links is not None:
            command = {"command": "touch", "touchpoint": orjson.Fragment(raw)}
            self._send(batch, self.topics.journey_inbox.name, links.customer_id, command)
            batch.tally["forwarded"] += 1
        else:
            self.apply(batch, anonymous_id, tp)

    def on_command(self, batch: _Batch, key: str, body: dict[str, Any]) -> None:
        command = body.get("command")
        if command == "touch":
            tp = decode_stored_touchpoint(orjson.dumps(body["touchpoint"]))
            self.apply(batch, key, tp)
        elif command == "link":
            tp = decode_stored_touchpoint(orjson.dumps(body["touchpoint"]))
            self.link(batch, key, tp)
        elif command == "merge":
            self.merge(batch, key, JourneyState.from_dict(body["state"]))
        else:
            batch.tally["unknown_commands"] += 1
            log.error("journey inbox: unknown command %r for key %s", command, key)

    def handle(self, got: dict[Any, list[Any]]) -> tuple[list[Record], Counter[str]]:
        batch = _Batch()
        inbox = self.topics.journey_inbox.name
        for tp, messages in got.items():
            for msg in messages:
                key = msg.key.decode() if msg.key else ""
                batch.partition[key] = tp.partition
                try:
                    if msg.topic == inbox:
                        self.on_command(batch, key, orjson.loads(msg.value))
                    else:
                        self.on_touchpoint(batch, decode_stored_touchpoint(msg.value),
                                           msg.value)
                except Exception as exc:  # a record only the engine writes; never stall on one
                    batch.tally["failed"] += 1
                    log.error("journey projection skipped %s[%d]@%d: %s: %s", msg.topic,
                              msg.partition, msg.offset, type(exc).__name__, exc)
        self.save(batch)
        return batch.out, batch.tally

    def save(self, batch: _Batch) -> None:
        """Write each changed state once, in the store of its key's partition."""
        for key, state in batch.journeys.items():
            store = self._store(batch, key)
            if state is None:
                store.put(JOURNEY_PREFIX + key.encode(), None)
            else:
                data = state.to_dict()  # once: the store and the row both need it
                store.put(JOURNEY_PREFIX + key.encode(), orjson.dumps(data))
                self._send(batch, self.topics.journey_states.name, key,
                           journey_row(state, data=data))
        for anonymous_id, links in batch.links.items():
            self._store(batch, anonymous_id).put(LINK_PREFIX + anonymous_id.encode(),
                                                 orjson.dumps(links.to_dict()))

    def committed(self, tally: Counter[str]) -> None:
        self.metrics.journey.update(tally)


def install_journeys(app: faust.App, settings: Settings, topics: Topics,
                     metrics: Metrics) -> JourneyProjection:
    """Run the journey projection in the worker: started with the app, drained on shutdown."""
    projection = JourneyProjection(settings, topics, metrics)
    run_in_worker(app, projection)
    return projection
