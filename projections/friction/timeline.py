"""A customer's friction as a function of their touchpoints, whatever order they arrive in.

The rules (`projections.friction.rules`) read touchpoints one at a time. Applied in
event-time order - before each touchpoint, the deadlines that passed before it fire;
after the last one, those at or before the partition's watermark - they give
`evaluate(events, watermark)`: the friction an in-order replay finds. That is the
definition; this module reaches it for any arrival order.

A `Timeline` holds one customer's touchpoints of roughly the last `max_lateness`
(unsealed, sorted by event time), the rules' state after everything older (`base`, the
sealed part), and the friction published so far that later touchpoints may still
change (`open`). On new touchpoints, `advance` puts them in their place, replays the
unsealed part from `base` (or, when they are all newest, just continues from the
cached end of the last replay), and compares what it finds with `open`: a new or
changed finding is published, an open one no longer found is retracted. Touchpoints
more than `max_lateness` behind the newest are then sealed into `base`; friction that
only they caused is final. A touchpoint that arrives behind the sealed part is "too
late": it cannot be placed exactly and is returned as such (the caller counts and
logs it) without changing the friction.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from projections.friction.config import FrictionConfig
from projections.friction.rules import KIND_IN_ID, Finding, detect, expire, next_deadline
from projections.friction.signal import FrictionSignal
from projections.friction.state import FrictionState
from schemas.friction import Severity, friction_id_for

NO_TIME: Final = -(2**62)
Order = tuple[int, str]  # (event time ms, event id)
END: Final[Order] = (2**62, "")  # the order key of findings of the final deadlines


def friction_id_of(finding: Finding, customer_key: str) -> str:
    """The finding's deterministic friction id (EVENTS.md)."""
    kind = finding.kind if finding.rule in KIND_IN_ID else None
    return friction_id_for(finding.rule, customer_key, finding.evidence, kind)


def finding_to_dict(finding: Finding) -> dict[str, Any]:
    return {"rule": finding.rule, "kind": finding.kind, "severity": finding.severity.value,
            "occurred_at": finding.occurred_at, "evidence": list(finding.evidence),
            "message": finding.message, "case_id": finding.case_id,
            "channel": finding.channel, "stage": finding.stage}


def finding_from_dict(data: Mapping[str, Any]) -> Finding:
    return Finding(rule=data["rule"], kind=data["kind"], severity=Severity(data["severity"]),
                   occurred_at=data["occurred_at"], evidence=tuple(data["evidence"]),
                   message=data["message"], case_id=data["case_id"],
                   channel=data["channel"], stage=data["stage"])


def run(state: FrictionState | None, events: Iterable[FrictionSignal],
        config: FrictionConfig) -> tuple[FrictionState | None, list[tuple[Order, Finding]]]:
    """Apply `events` (sorted) in event-time order; each finding comes with the order key
    of the touchpoint it belongs to (a deadline that fires before a touchpoint belongs
    to that touchpoint)."""
    found: list[tuple[Order, Finding]] = []
    for event in events:
        order = event.order
        if state is not None:
            state, fired = expire(state, event.at - 1, config)
            found.extend((order, f) for f in fired)
        state, more = detect(state, event, config)
        found.extend((order, f) for f in more)
    return state, found


def deadlines(state: FrictionState | None, watermark: int,
              config: FrictionConfig) -> list[Finding]:
    """The deadlines of `state` at or before the watermark: friction without a next event."""
    if state is None or watermark == NO_TIME:
        return []
    return expire(state, watermark, config)[1]


def evaluate(events: Iterable[FrictionSignal], watermark: int, config: FrictionConfig,
             customer_key: str) -> dict[str, Finding]:
    """The friction an in-order replay of one customer's touchpoints finds, by friction id:
    the reference every arrival order must reach. Repeated event ids count once."""
    unique = {e.event_id: e for e in events}
    state, found = run(None, sorted(unique.values(), key=lambda e: e.order), config)
    findings = [f for _, f in found] + deadlines(state, watermark, config)
    return {friction_id_of(f, customer_key): f for f in findings}


@dataclass(frozen=True, slots=True)
class Head:
    """The end of the last replay of the unsealed touchpoints: state and findings."""

    state: FrictionState | None
    found: tuple[tuple[Order, Finding], ...]


@dataclass(frozen=True, slots=True)
class Timeline:
    """One customer's friction evidence; see the module docstring."""

    base: FrictionState | None = None
    sealed: Order | None = None  # the order key of the newest sealed touchpoint
    newest: int = NO_TIME
    # The partition's event time (its watermark, or the newest touchpoint if later) when
    # touchpoints of the customer last arrived: quiet is measured from there, not from
    # the customer's own newest, so an import of old history is not forgotten at once.
    touched: int = NO_TIME
    events: tuple[FrictionSignal, ...] = ()
    open: Mapping[str, Finding] = field(default_factory=dict)
    head: Head | None = field(default=None, compare=False)  # a cache, never serialised

    def meta_dict(self) -> dict[str, Any]:
        """Everything but the unsealed touchpoints, which are stored one by one."""
        return {"base": None if self.base is None else self.base.to_dict(),
                "sealed": None if self.sealed is None else list(self.sealed),
                "newest": self.newest, "touched": self.touched,
                "open": {fid: finding_to_dict(f) for fid, f in self.open.items()}}

    @classmethod
    def from_meta(cls, data: Mapping[str, Any],
                  events: Iterable[FrictionSignal]) -> Timeline:
        sealed = data["sealed"]
        return cls(base=None if data["base"] is None else FrictionState.from_dict(data["base"]),
                   sealed=None if sealed is None else (sealed[0], sealed[1]),
                   newest=data["newest"], touched=data.get("touched", data["newest"]),
                   events=tuple(sorted(events, key=lambda e: e.order)),
                   open={fid: finding_from_dict(f) for fid, f in data["open"].items()})


@dataclass(frozen=True, slots=True)
class Advanced:
    """What `advance` did: the new timeline and what to publish, retract and report."""

    timeline: Timeline
    published: list[tuple[str, Finding]]  # new or changed friction
    retracted: list[tuple[str, Finding]]  # friction the evidence no longer supports
    added: list[FrictionSignal]  # touchpoints now unsealed (stored)
    sealed: list[FrictionSignal]  # touchpoints sealed into the base (no longer stored)
    too_late: list[FrictionSignal]  # behind the sealed part: not placed
    repeated: int = 0  # event ids the timeline already held


def advance(timeline: Timeline, new: Sequence[FrictionSignal], watermark: int,
            config: FrictionConfig, customer_key: str) -> Advanced:
    """Add `new` touchpoints (possibly none: the watermark moved) and find the friction
    again; see the module docstring."""
    known = {e.event_id for e in timeline.events}
    fresh: list[FrictionSignal] = []
    too_late: list[FrictionSignal] = []
    repeated = 0
    for event in sorted(new, key=lambda e: e.order):
        if event.event_id in known:
            repeated += 1
        elif timeline.sealed is not None and event.order <= timeline.sealed:
            too_late.append(event)
        else:
            fresh.append(event)
            known.add(event.event_id)
    events = timeline.events
    head = timeline.head
    if fresh:
        in_order = not events or fresh[0].order > events[-1].order
        events = tuple(sorted((*events, *fresh), key=lambda e: e.order))
        if head is not None and in_order:
            state, more = run(head.state, fresh, config)
            head = Head(state, (*head.found, *more))
        else:
            head = None
    if head is None:
        state, found = run(timeline.base, events, config)
        head = Head(state, tuple(found))
    newest = max([timeline.newest, *(e.at for e in fresh)])
    touched = max(timeline.touched, watermark, newest) if fresh else timeline.touched

    current: dict[str, tuple[Order, Finding]] = {}
    for order, finding in head.found:
        current[friction_id_of(finding, customer_key)] = (order, finding)
    for finding in deadlines(head.state, watermark, config):
        current.setdefault(friction_id_of(finding, customer_key), (END, finding))
    published = [(fid, f) for fid, (_, f) in current.items() if timeline.open.get(fid) != f]
    retracted = [(fid, f) for fid, f in timeline.open.items() if fid not in current]

    # Seal what no touchpoint arriving within max_lateness can precede any more.
    frontier = newest - config.max_lateness
    k = sum(1 for e in events if e.at < frontier)
    k = max(k, len(events) - config.max_timeline_events)
    base, sealed_key, sealed = timeline.base, timeline.sealed, list[FrictionSignal]()
    if k > 0:
        sealed = list(events[:k])
        base, _ = run(timeline.base, sealed, config)
        sealed_key = sealed[-1].order
        events = events[k:]
        head = Head(head.state, tuple((o, f) for o, f in head.found if o > sealed_key))
    open_now = {fid: f for fid, (order, f) in current.items()
                if sealed_key is None or order > sealed_key}
    fresh_ids = {e.event_id for e in fresh}
    sealed_ids = {e.event_id for e in sealed}
    return Advanced(
        Timeline(base=base, sealed=sealed_key, newest=newest, touched=touched, events=events,
                 open=open_now, head=head),
        published=published, retracted=retracted,
        added=[e for e in fresh if e.event_id not in sealed_ids],
        sealed=[e for e in sealed if e.event_id not in fresh_ids],
        too_late=too_late, repeated=repeated)


def next_moment(timeline: Timeline, watermark: int, config: FrictionConfig) -> int | None:
    """The next watermark at which `advance` without touchpoints can change something (a
    deadline, or forgetting the customer); None when the customer can be forgotten now:
    nothing pending, and `customer_ttl` of the partition's event time has passed since
    touchpoints of the customer last arrived."""
    head = timeline.head
    state = head.state if head is not None else run(timeline.base, timeline.events, config)[0]
    if state is not None:
        after, _ = expire(state, watermark, config)
        if after is not None:
            return next_deadline(after, config)
    quiet_until = timeline.touched + config.customer_ttl
    return None if watermark >= quiet_until else quiet_until
