"""Every Kafka topic of the engine, declared once: name, key, value, partitions, retention."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from streams.settings import Settings


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """What a topic carries; the name comes from settings so operators can rename it."""

    name: str
    key: str
    value: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


# The event store is never rewritten: projections are rebuilt from offset 0.
_FOREVER = {"retention.ms": "-1", "retention.bytes": "-1"}
_FOUR_WEEKS = {"retention.ms": str(28 * 24 * 3600 * 1000)}
_ONE_WEEK = {"retention.ms": str(7 * 24 * 3600 * 1000)}
_COMPACTED = {"cleanup.policy": "compact"}


@dataclass(frozen=True, slots=True)
class Topics:
    ingest: TopicSpec
    touchpoints: TopicSpec
    dlq: TopicSpec
    friction: TopicSpec
    # friction alerts whose delivery failed past the retry budget
    alerts_dlq: TopicSpec
    # valid touchpoints keyed by customer, before the dedup stage
    validated: TopicSpec
    # internal to the engine, named after the projection id so a replay starts them afresh
    journey_inbox: TopicSpec
    journey_states: TopicSpec
    journey_transitions: TopicSpec
    identity_links: TopicSpec
    # the changelogs of the stages' per-partition state (streams/store.py)
    dedup_state: TopicSpec
    journey_state: TopicSpec
    friction_state: TopicSpec

    def all(self) -> tuple[TopicSpec, ...]:
        return (self.ingest, self.touchpoints, self.dlq, self.friction, self.alerts_dlq,
                self.validated, self.journey_inbox, self.journey_states,
                self.journey_transitions, self.identity_links, self.dedup_state,
                self.journey_state, self.friction_state)


def topics(settings: Settings) -> Topics:
    """The engine's topics as configured."""
    n = settings.topic_partitions
    return Topics(
        ingest=TopicSpec(
            settings.topic_ingest, "any (customer id recommended)", "touchpoint JSON", n,
            dict(_FOUR_WEEKS),
        ),
        touchpoints=TopicSpec(
            settings.topic_touchpoints, "customer key", "normalised touchpoint JSON", n,
            dict(_FOREVER),
        ),
        dlq=TopicSpec(
            settings.topic_dlq, "as received", "dead-letter record JSON", n, dict(_FOREVER)
        ),
        friction=TopicSpec(
            settings.topic_friction, "customer key", "friction event JSON", n, dict(_FOREVER)
        ),
        alerts_dlq=TopicSpec(
            settings.topic_alerts_dlq, "customer key",
            "friction event JSON plus the sink and the last delivery error", n, dict(_FOREVER),
        ),
        # Named from the app id, not the projection's: a replay does not re-validate.
        validated=TopicSpec(
            f"{settings.app_id}.touchpoints.validated", "customer key",
            "normalised touchpoint JSON, event id in the event_id header", n, dict(_ONE_WEEK),
        ),
        journey_inbox=TopicSpec(
            f"{settings.projection_id}.journey-inbox", "person key",
            "journey command JSON: touch, link or merge", n, dict(_FOUR_WEEKS),
        ),
        journey_states=TopicSpec(
            f"{settings.projection_id}.journey-states", "customer key", "journeys row JSON", n,
            dict(_FOUR_WEEKS),
        ),
        journey_transitions=TopicSpec(
            f"{settings.projection_id}.journey-transitions", "customer key",
            "journey_transitions row JSON", n, dict(_FOUR_WEEKS),
        ),
        identity_links=TopicSpec(
            f"{settings.projection_id}.identity-links", "anonymous id", "identities row JSON", n,
            dict(_FOUR_WEEKS),
        ),
        # Compacted changelogs: the latest value of each key of a stage's state, written in
        # the same transaction as the stage's outputs and consumed offsets.
        dedup_state=TopicSpec(
            f"{settings.app_id}.dedup-state", "event id (and its time index entry)",
            "first seen epoch s; tombstone = forgotten", n, dict(_COMPACTED),
        ),
        journey_state=TopicSpec(
            f"{settings.projection_id}.journey-state", "person or anonymous id, prefixed",
            "journey state and identity link JSON", n, dict(_COMPACTED),
        ),
        friction_state=TopicSpec(
            f"{settings.projection_id}.friction-timeline", "customer key (and event), prefixed",
            "friction detector timeline JSON and the partition's watermark", n,
            dict(_COMPACTED),
        ),
    )
