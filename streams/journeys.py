"""The journey agent: identity links and per-customer journeys, fed to ClickHouse.

Partitioning: `touchpoints` is keyed by customer_id, or by anonymous_id before
identification, and the journey inbox (link, merge and forwarded touch commands)
is keyed the same way with the same partition count, so the journey of a key and
the link of an anonymous id always live in the partition of that key - on
whichever worker owns it. An anonymous event whose id is already linked is
forwarded to its customer's partition; an identify sends a link command to the
anonymous id's partition, which moves the anonymous journey to the customer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

import faust
import orjson

from journey.settings import Settings
from projections.identity import IdentityLinks, LinkOutcome, link_identity
from projections.journey import (
    JourneyConfig,
    JourneyState,
    Transition,
    apply_touchpoint,
    merge_journeys,
    window_transitions,
)
from schemas.codec import decode_stored_touchpoint
from schemas.touchpoint import Touchpoint
from streams.delivery import as_current, send_all
from streams.metrics import Metrics
from streams.tables import Record, put
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
    events: dict[str, Any] = field(default_factory=dict)  # key -> an event of its partition
    out: list[Record] = field(default_factory=list)


class JourneyProjection:
    """The wiring of the pure journey and identity code to Faust tables and topics."""

    def __init__(self, settings: Settings, topics: Topics, metrics: Metrics,
                 journeys: Any, links: Any, config: JourneyConfig | None = None) -> None:
        self.settings = settings
        self.topics = topics
        self.metrics = metrics
        self.journeys = journeys
        self.links = links
        self.config = config or JourneyConfig()

    # -- state access, coalesced per batch ------------------------------------------
    def _journey(self, batch: _Batch, key: str) -> JourneyState | None:
        if key in batch.journeys:
            return batch.journeys[key]
        stored = self.journeys.get(key.encode())
        return None if stored is None else JourneyState.from_dict(stored)

    def _link(self, batch: _Batch, anonymous_id: str) -> IdentityLinks | None:
        if anonymous_id in batch.links:
            return batch.links[anonymous_id]
        stored = self.links.get(anonymous_id.encode())
        return None if stored is None else IdentityLinks.from_dict(stored)

    def _send(self, batch: _Batch, topic: str, key: str, row: dict[str, Any]) -> None:
        batch.out.append((topic, key.encode(), orjson.dumps(row), None))

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
        self.metrics.journey["transitions"] += len(added)
        self.metrics.journey["retracted"] += len(retracted)

    # -- the three things that can happen to a key --------------------------------
    def apply(self, batch: _Batch, key: str, tp: Touchpoint) -> None:
        update = apply_touchpoint(self._journey(batch, key), tp, self.config, customer_key=key)
        if update.duplicate:
            self.metrics.journey["duplicates"] += 1
            return
        self.metrics.journey["applied"] += 1
        self._emit_update(batch, key, update.state, update.transitions, update.retracted)

    def link(self, batch: _Batch, anonymous_id: str, identify: Touchpoint) -> None:
        links, outcome = link_identity(self._link(batch, anonymous_id), identify)
        batch.links[anonymous_id] = links
        self.metrics.journey[f"identity_{outcome.value}"] += 1
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
        customer = self._journey(batch, key)
        if customer is None:
            # Nothing known of the customer yet: the anonymous journey becomes theirs.
            before = window_transitions(anonymous)
            merged = replace(anonymous, customer_key=key, version=anonymous.version + 1,
                             anonymous_ids={**anonymous.anonymous_ids,
                                            anonymous.customer_key: anonymous.last_seen})
            self._emit_update(batch, key, merged, window_transitions(merged), before)
        else:
            update = merge_journeys(customer, anonymous, self.config)
            self._emit_update(batch, key, update.state, update.transitions, update.retracted,
                              retract_version=update.state.version + 1)
        self.metrics.journey["merged"] += 1

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
            self.metrics.journey["forwarded"] += 1
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
            self.metrics.journey["unknown_commands"] += 1
            log.error("journey inbox: unknown command %r for key %s", command, key)

    def handle(self, events: list[Any]) -> _Batch:
        batch = _Batch()
        inbox = self.topics.journey_inbox.name
        for event in events:
            msg = event.message
            key = msg.key.decode() if msg.key else ""
            as_current(event)  # table reads look in the partition of the current event
            batch.events[key] = event
            try:
                if msg.topic == inbox:
                    self.on_command(batch, key, orjson.loads(msg.value))
                else:
                    self.on_touchpoint(batch, decode_stored_touchpoint(msg.value), msg.value)
            except Exception as exc:  # a record only the engine writes; never stall on one
                self.metrics.journey["failed"] += 1
                log.error("journey projection skipped %s[%d]@%d: %s: %s", msg.topic,
                          msg.partition, msg.offset, type(exc).__name__, exc)
        return batch

    def save(self, batch: _Batch) -> None:
        """Write each changed state once, in the partition of its key."""
        for key, state in batch.journeys.items():
            event = batch.events[key]
            as_current(event)
            partition = event.message.partition
            if state is None:
                put(self.journeys, key.encode(), None, partition, batch.out)
            else:
                data = state.to_dict()  # once: the table and the row both need it
                put(self.journeys, key.encode(), data, partition, batch.out)
                self._send(batch, self.topics.journey_states.name, key,
                           journey_row(state, data=data))
        for anonymous_id, links in batch.links.items():
            event = batch.events[anonymous_id]
            as_current(event)
            put(self.links, anonymous_id.encode(), links.to_dict(), event.message.partition,
                batch.out)


def install_journeys(app: faust.App, settings: Settings, topics: Topics, metrics: Metrics,
                     journeys: Any, links: Any) -> JourneyProjection:
    projection = JourneyProjection(settings, topics, metrics, journeys, links)

    async def project(stream: Any) -> None:
        async for events in stream.take_events(settings.validator_batch_size, within=0.1):
            batch = projection.handle(list(events))
            projection.save(batch)
            # Acked when this body returns: rows and commands must be on the broker first.
            await send_all(app, batch.out, metrics)

    # Two agents over co-partitioned topics share the tables: one Faust stream over
    # both topics stalled under load (its own commands fed back into its buffer).
    # Each batch reads and saves state without awaiting, so the agents never interleave
    # inside a batch.
    for topic, name in ((topics.touchpoints.name, "journeys"),
                        (topics.journey_inbox.name, "journey-inbox")):
        source = app.topic(topic, key_type=bytes, value_type=bytes, key_serializer="raw",
                           value_serializer="raw")
        app.agent(source, name=name)(project)
    return projection
