"""The per-customer journey as pure code: the stage rule, an event-time window, merges.

Stage rule
----------
Each touchpoint is read as one stage signal (`read_signal`); `advance_stage` then
decides from the current stage, that signal and whether the customer had bought
before the touchpoint (in event time). The first row that matches wins:

==  ==============================  ======================================================
#   when                            next stage
==  ==============================  ======================================================
1   cancellation                    churned
2   the customer is churned         purchase signal: purchase if it is the first purchase,
                                    else retention; any other signal: stays churned
3   exposure                        awareness if the journey has no stage yet, else unchanged
4   no purchase yet                 checkout or purchase signal: purchase;
                                    any other signal: consideration
5   after the first purchase        advocate: retention on a detractor signal, else stays;
                                    promoter signal: advocacy; anything else: retention
==  ==============================  ======================================================

==============  ===========================================================================
signal          touchpoints
==============  ===========================================================================
cancellation    subscription_cancelled
purchase        purchase, subscription_started
checkout        checkout_started
exposure        ad_impression, ad_click, email_sent, email_opened, email_clicked
promoter        survey nps 9-10, review rating 5, social_mention sentiment positive
detractor       survey nps 0-6 or csat 1-2, review rating 1-2, social_mention negative
activity        every other touchpoint (visits, views, search, cart, self-service, service,
                community, in person, other feedback, subscription changes, identify, ...)
==============  ===========================================================================

So marketing never moves anyone but a newcomer; before a purchase every active
touchpoint (a promoter or detractor signal included: a prospect cannot advocate) is
consideration, and a checkout that is then left for more browsing goes back to
consideration; the purchase stage lasts until the next non-marketing touchpoint;
a review of 4, NPS 7-8, CSAT 3-5 and neutral mentions are not signals (a 4 is
satisfied but not a recommendation). Inactivity churn is not a stored stage: it is
evaluated against a given time by `is_churned_by_inactivity` / `stage_as_of`.

Event time
----------
The state keeps the last `recent_limit` touchpoints sorted by (occurred_at,
event_id) and a `Checkpoint`: the journey as of just before that window. An event
that is newest is one step. A late event is inserted where it belongs and the stage
path is recomputed from it onwards; the transitions that changed are returned as
`retracted` (their old `transition_id`s) and `transitions` (the new ones), so
arrival order does not change the result while all events fit in the window. When
the window overflows, the oldest entry is folded into the checkpoint. An event older
than every folded one counts exactly (tallies, and a purchase makes what follows
retention), but takes no place in the stage path: the window is restaged from the
checkpoint, and transitions of folded events are never retracted, so the stored chain
of stages stays one consistent path in event time (each from_stage the previous
to_stage). Duplicates are recognised by event_id within the window only (the dedup
stage also drops repeats within its dedup window).
"""

from __future__ import annotations

import bisect
import uuid
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Final, TypeVar

import orjson

from schemas.catalogue import BusinessArea, area_of
from schemas.commerce import PurchaseProperties, RefundProperties
from schemas.feedback import ReviewProperties, SocialMentionProperties, SurveyResponseProperties
from schemas.touchpoint import Touchpoint, identity_key

TRANSITION_NAMESPACE: Final = uuid.UUID("7663da1b-7f9d-428f-9b0d-cac824d83043")
"""UUIDv5 namespace of transition ids. Never change it: stored ids would stop matching."""

PROMOTER_NPS: Final = 9
DETRACTOR_NPS: Final = 6
POOR_CSAT: Final = 2
TOP_REVIEW: Final = 5
POOR_REVIEW: Final = 2

_PURCHASE_TYPES: Final = frozenset({"purchase", "subscription_started"})
_CASE_OPENING_TYPES: Final = frozenset({"support_contact", "billing_inquiry", "case_reopened"})
_CASE_RESOLVING_TYPES: Final = frozenset({"case_resolved"})
# The company reaching out while the customer does nothing: not a sign of life.
_PASSIVE_TYPES: Final = frozenset({"ad_impression", "email_sent"})
# Money is kept to a millionth of the currency unit, so sums of amounts with up to
# six decimals do not depend on the order in which they were added.
_MONEY_DECIMALS: Final = 6


class Stage(StrEnum):
    """Where a customer stands in the journey (DOMAIN.md); they can move back and forth."""

    AWARENESS = "awareness"
    CONSIDERATION = "consideration"
    PURCHASE = "purchase"
    RETENTION = "retention"
    ADVOCACY = "advocacy"
    CHURNED = "churned"


class StageSignal(StrEnum):
    """What one touchpoint says about the stage (see the module docstring)."""

    EXPOSURE = "exposure"
    ACTIVITY = "activity"
    CHECKOUT = "checkout"
    PURCHASE = "purchase"
    PROMOTER = "promoter"
    DETRACTOR = "detractor"
    CANCELLATION = "cancellation"


def read_signal(tp: Touchpoint) -> StageSignal:
    """The stage signal of a touchpoint (the second table of the module docstring)."""
    if tp.type == "subscription_cancelled":
        return StageSignal.CANCELLATION
    if tp.type in _PURCHASE_TYPES:
        return StageSignal.PURCHASE
    if tp.type == "checkout_started":
        return StageSignal.CHECKOUT
    if area_of(tp.type) is BusinessArea.MARKETING:
        return StageSignal.EXPOSURE
    props = tp.properties
    if isinstance(props, SurveyResponseProperties):
        if props.survey == "nps" and props.score >= PROMOTER_NPS:
            return StageSignal.PROMOTER
        if (props.survey == "nps" and props.score <= DETRACTOR_NPS) or (
            props.survey == "csat" and props.score <= POOR_CSAT
        ):
            return StageSignal.DETRACTOR
    elif isinstance(props, ReviewProperties):
        if props.rating >= TOP_REVIEW:
            return StageSignal.PROMOTER
        if props.rating <= POOR_REVIEW:
            return StageSignal.DETRACTOR
    elif isinstance(props, SocialMentionProperties):
        if props.sentiment == "positive":
            return StageSignal.PROMOTER
        if props.sentiment == "negative":
            return StageSignal.DETRACTOR
    return StageSignal.ACTIVITY


def advance_stage(
    current: Stage | None, touchpoint: Touchpoint | StageSignal, *, has_purchased: bool
) -> Stage:
    """The stage rule: the stage after `touchpoint` (the first table of the module docstring).

    `has_purchased` says whether a purchase signal came before the touchpoint in
    event time. A stored `StageSignal` may stand for the touchpoint, which is how
    the window is replayed without keeping whole touchpoints.
    """
    signal = touchpoint if isinstance(touchpoint, StageSignal) else read_signal(touchpoint)
    if signal is StageSignal.CANCELLATION:
        return Stage.CHURNED
    if current is Stage.CHURNED:
        if signal is StageSignal.PURCHASE:
            return Stage.RETENTION if has_purchased else Stage.PURCHASE
        return Stage.CHURNED
    if signal is StageSignal.EXPOSURE:
        return Stage.AWARENESS if current is None else current
    if not has_purchased:
        if signal in (StageSignal.CHECKOUT, StageSignal.PURCHASE):
            return Stage.PURCHASE
        return Stage.CONSIDERATION
    if current is Stage.ADVOCACY:
        return Stage.RETENTION if signal is StageSignal.DETRACTOR else Stage.ADVOCACY
    if signal is StageSignal.PROMOTER:
        return Stage.ADVOCACY
    return Stage.RETENTION


@dataclass(frozen=True, slots=True)
class JourneyConfig:
    """Bounds of the journey state and the inactivity period."""

    recent_limit: int = 50
    case_limit: int = 20
    anonymous_id_limit: int = 20
    inactivity_days: int = 90

    def __post_init__(self) -> None:
        for name in ("recent_limit", "case_limit", "anonymous_id_limit", "inactivity_days"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")


@dataclass(frozen=True, slots=True)
class Transition:
    """A customer moved from one stage to another at a touchpoint."""

    customer_key: str
    from_stage: Stage | None
    to_stage: Stage
    from_type: str | None
    """Type of the touchpoint before this one in event time (None for the first)."""
    to_type: str
    event_id: str
    occurred_at: datetime

    @property
    def transition_id(self) -> str:
        """UUIDv5 of everything the transition says except the time (fixed by event_id).

        A late event that changes what came before a transition changes its id, so
        the old row is retracted and the new one added rather than edited in place.
        """
        name = orjson.dumps(
            [self.customer_key, self.event_id, self.from_stage, self.to_stage, self.from_type]
        ).decode("utf-8")
        return str(uuid.uuid5(TRANSITION_NAMESPACE, name))

    def to_dict(self) -> dict[str, Any]:
        return {
            "transition_id": self.transition_id,
            "customer_key": self.customer_key,
            "from_stage": _value(self.from_stage),
            "to_stage": self.to_stage.value,
            "from_type": self.from_type,
            "to_type": self.to_type,
            "event_id": self.event_id,
            "occurred_at": self.occurred_at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class RecentTouchpoint:
    """One touchpoint of the recent window, with the stage it left the customer in."""

    event_id: str
    type: str
    channel: str
    occurred_at: datetime
    case_id: str | None
    signal: StageSignal
    stage: Stage

    @property
    def order(self) -> tuple[datetime, str]:
        # event_id breaks ties so that events at the same instant have one order.
        return (self.occurred_at, self.event_id)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The journey as of just before the recent window: what was folded out of it."""

    stage: Stage | None = None
    has_purchased: bool = False
    last_type: str | None = None
    last_occurred_at: datetime | None = None

    def after(self, entry: RecentTouchpoint) -> Checkpoint:
        """This checkpoint moved past `entry`, whose stage is already computed."""
        newer = self.last_occurred_at is None or entry.occurred_at >= self.last_occurred_at
        return Checkpoint(
            stage=entry.stage,
            has_purchased=self.has_purchased or entry.signal is StageSignal.PURCHASE,
            # A very late event keeps the type of the latest folded one before the window.
            last_type=entry.type if newer else self.last_type,
            last_occurred_at=entry.occurred_at if newer else self.last_occurred_at,
        )


@dataclass(frozen=True, slots=True)
class CaseMark:
    """Latest event times that opened and resolved one support case."""

    opened_at: datetime | None = None
    resolved_at: datetime | None = None

    @property
    def is_open(self) -> bool:
        # Event times, not arrival order, decide; at the same instant resolving wins.
        return self.opened_at is not None and (
            self.resolved_at is None or self.opened_at > self.resolved_at
        )

    @property
    def last_activity(self) -> datetime:
        times = [t for t in (self.opened_at, self.resolved_at) if t is not None]
        return max(times)


@dataclass(frozen=True, slots=True)
class ScoreMark:
    """A survey score and the touchpoint that gave it."""

    score: int
    at: datetime
    event_id: str

    @property
    def order(self) -> tuple[datetime, str]:
        return (self.at, self.event_id)


@dataclass(frozen=True, slots=True)
class JourneyState:
    """One customer's journey; bounded in size whatever the number of events.

    Mappings are never mutated: every update builds new ones. Money is summed per
    currency (`revenue` from purchases, `refunds` from refunds) and never converted.
    """

    customer_key: str
    version: int
    """Number of touchpoints applied (duplicates excluded), merged journeys included."""
    first_seen: datetime
    last_seen: datetime
    last_active: datetime | None
    """Latest touchpoint other than an ad impression or a sent email."""
    touchpoints: int
    by_type: Mapping[str, int]
    by_channel: Mapping[str, int]
    purchases: int
    """Purchase signals: purchase and subscription_started events."""
    revenue: Mapping[str, float]
    refunds: Mapping[str, float]
    cases: Mapping[str, CaseMark]
    last_csat: ScoreMark | None
    last_nps: ScoreMark | None
    recent: tuple[RecentTouchpoint, ...]
    checkpoint: Checkpoint
    anonymous_ids: Mapping[str, datetime]
    """Linked anonymous ids -> the latest event time seen with each."""

    @property
    def stage(self) -> Stage:
        stage = self.recent[-1].stage if self.recent else self.checkpoint.stage
        if stage is None:
            raise ValueError(f"the journey of {self.customer_key} has no touchpoint")
        return stage

    @property
    def has_purchased(self) -> bool:
        return self.purchases > 0

    @property
    def open_cases(self) -> frozenset[str]:
        return frozenset(case_id for case_id, mark in self.cases.items() if mark.is_open)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types only; `stage` and `open_cases` are included for readers."""
        return {
            "customer_key": self.customer_key,
            "version": self.version,
            "stage": self.stage.value,
            "first_seen": self.first_seen.isoformat(),
            "last_seen": self.last_seen.isoformat(),
            "last_active": _iso(self.last_active),
            "touchpoints": self.touchpoints,
            "by_type": dict(self.by_type),
            "by_channel": dict(self.by_channel),
            "purchases": self.purchases,
            "revenue": dict(self.revenue),
            "refunds": dict(self.refunds),
            "cases": {
                case_id: {"opened_at": _iso(mark.opened_at), "resolved_at": _iso(mark.resolved_at)}
                for case_id, mark in self.cases.items()
            },
            "open_cases": sorted(self.open_cases),
            "last_csat": _score_dict(self.last_csat),
            "last_nps": _score_dict(self.last_nps),
            "recent": [
                {
                    "event_id": entry.event_id,
                    "type": entry.type,
                    "channel": entry.channel,
                    "occurred_at": entry.occurred_at.isoformat(),
                    "case_id": entry.case_id,
                    "signal": entry.signal.value,
                    "stage": entry.stage.value,
                }
                for entry in self.recent
            ],
            "checkpoint": {
                "stage": _value(self.checkpoint.stage),
                "has_purchased": self.checkpoint.has_purchased,
                "last_type": self.checkpoint.last_type,
                "last_occurred_at": _iso(self.checkpoint.last_occurred_at),
            },
            "anonymous_ids": {anon: at.isoformat() for anon, at in self.anonymous_ids.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JourneyState:
        """The state `to_dict` wrote (derived fields are recomputed, not read)."""
        checkpoint = data["checkpoint"]
        return cls(
            customer_key=data["customer_key"],
            version=data["version"],
            first_seen=datetime.fromisoformat(data["first_seen"]),
            last_seen=datetime.fromisoformat(data["last_seen"]),
            last_active=_from_iso(data["last_active"]),
            touchpoints=data["touchpoints"],
            by_type=dict(data["by_type"]),
            by_channel=dict(data["by_channel"]),
            purchases=data["purchases"],
            revenue=dict(data["revenue"]),
            refunds=dict(data["refunds"]),
            cases={
                case_id: CaseMark(_from_iso(mark["opened_at"]), _from_iso(mark["resolved_at"]))
                for case_id, mark in data["cases"].items()
            },
            last_csat=_score_from(data["last_csat"]),
            last_nps=_score_from(data["last_nps"]),
            recent=tuple(
                RecentTouchpoint(
                    event_id=entry["event_id"],
                    type=entry["type"],
                    channel=entry["channel"],
                    occurred_at=datetime.fromisoformat(entry["occurred_at"]),
                    case_id=entry["case_id"],
                    signal=StageSignal(entry["signal"]),
                    stage=Stage(entry["stage"]),
                )
                for entry in data["recent"]
            ),
            checkpoint=Checkpoint(
                stage=None if checkpoint["stage"] is None else Stage(checkpoint["stage"]),
                has_purchased=checkpoint["has_purchased"],
                last_type=checkpoint["last_type"],
                last_occurred_at=_from_iso(checkpoint["last_occurred_at"]),
            ),
            anonymous_ids={
                anon: datetime.fromisoformat(at) for anon, at in data["anonymous_ids"].items()
            },
        )


@dataclass(frozen=True, slots=True)
class JourneyUpdate:
    """The new state and how the emitted transitions change.

    Downstream deletes `retracted` by `transition_id`, then stores `transitions`.
    """

    state: JourneyState
    transitions: tuple[Transition, ...] = ()
    retracted: tuple[Transition, ...] = ()
    duplicate: bool = False
    """The event_id was already in the window: nothing changed."""
    before_window: bool = False
    """The event was older than every folded one: counted, but not placed in the path."""


def apply_touchpoint(
    state: JourneyState | None,
    tp: Touchpoint,
    config: JourneyConfig,
    *,
    customer_key: str | None = None,
) -> JourneyUpdate:
    """Apply one touchpoint at its place in event time.

    A new journey belongs to `customer_key` when given (the key the wiring
    resolved), else to tp.customer_key, else to identity_key(tp).
    """
    if state is None:
        key = customer_key or tp.customer_key or identity_key(tp)
        state = blank_journey(key, tp.occurred_at)
    else:
        if customer_key is not None and customer_key != state.customer_key:
            raise ValueError(
                f"touchpoint {tp.event_id} routed to {customer_key}, "
                f"but the journey belongs to {state.customer_key}"
            )
        if any(kept.event_id == tp.event_id for kept in state.recent):
            return JourneyUpdate(state, duplicate=True)

    signal = read_signal(tp)
    window = state.recent
    folded_until = state.checkpoint.last_occurred_at
    if folded_until is not None and tp.occurred_at < folded_until:
        # Older than every folded event: its place in the path is out of reach.
        checkpoint = replace(state.checkpoint, has_purchased=state.checkpoint.has_purchased
                             or signal is StageSignal.PURCHASE)
        _, before = _restage(state.customer_key, state.checkpoint, window)
        restaged, after = _restage(state.customer_key, checkpoint, window)
        tallied = _tally(state, tp, signal, config)
        added, retracted = _difference(before, after)
        return JourneyUpdate(replace(tallied, recent=restaged, checkpoint=checkpoint),
                             added, retracted, before_window=True)
    position = bisect.bisect_right([kept.order for kept in window], (tp.occurred_at, tp.event_id))
    cursor = _cursor_at(state.checkpoint, window, position)
    entry = RecentTouchpoint(
        event_id=tp.event_id,
        type=tp.type,
        channel=str(tp.channel),
        occurred_at=tp.occurred_at,
        case_id=tp.case_id,
        signal=signal,
        stage=advance_stage(cursor.stage, signal, has_purchased=cursor.has_purchased),
    )
    # Only what follows the new event can change: the prefix keeps its stages.
    old_suffix = window[position:]
    _, before = _restage(state.customer_key, cursor, old_suffix)
    suffix, after = _restage(state.customer_key, cursor, (entry, *old_suffix))
    checkpoint, recent = _trim(state.checkpoint, (*window[:position], *suffix), config)
    tallied = _tally(state, tp, signal, config)
    new_state = replace(tallied, recent=recent, checkpoint=checkpoint)
    added, retracted = _difference(before, after)
    return JourneyUpdate(new_state, added, retracted)


def merge_journeys(
    customer: JourneyState, anonymous: JourneyState, config: JourneyConfig
) -> JourneyUpdate:
    """Fold an anonymous visitor's journey into the customer's, as if it had been theirs.

    Counts are added (the two journeys are assumed to hold different events), the
    windows are merged by event time and the stage path is replayed under the
    customer's key. Every transition of both old windows that the merged path does
    not repeat is retracted - all of the anonymous key's, as that key is gone. Exact
    while neither journey has folded events; otherwise the path starts from the
    customer's checkpoint and events older than it count without a place in the path,
    as in `apply_touchpoint`, so the customer's chain of stages stays one path.
    """
    if customer.customer_key == anonymous.customer_key:
        raise ValueError(f"cannot merge the journey of {customer.customer_key} into itself")
    known = {entry.event_id for entry in customer.recent}
    window = sorted(
        (*customer.recent, *(e for e in anonymous.recent if e.event_id not in known)),
        key=lambda entry: entry.order,
    )
    # The customer's folded part (and its transitions) stays as it is: the merged path
    # starts from the customer's checkpoint, and the visitor's folded part counts (a
    # purchase in it makes what follows retention) without a place in the path.
    start = replace(customer.checkpoint, has_purchased=customer.checkpoint.has_purchased
                    or anonymous.checkpoint.has_purchased)
    if start.last_occurred_at is not None:
        # Entries older than the folded part cannot take their place in the path (as in
        # apply_touchpoint): they count, and a purchase among them makes what follows
        # retention, but they leave the window so the chain stays one consistent path.
        older = [e for e in window if e.occurred_at < start.last_occurred_at]
        if older:
            window = [e for e in window if e.occurred_at >= start.last_occurred_at]
            start = replace(start, has_purchased=start.has_purchased or any(
                e.signal is StageSignal.PURCHASE for e in older))
    _, customer_before = _restage(customer.customer_key, customer.checkpoint, customer.recent)
    _, anonymous_before = _restage(anonymous.customer_key, anonymous.checkpoint, anonymous.recent)
    restaged, after = _restage(customer.customer_key, start, window)
    checkpoint, recent = _trim(start, restaged, config)
    linked = dict(anonymous.anonymous_ids)
    linked[anonymous.customer_key] = anonymous.last_seen
    merged = JourneyState(
        customer_key=customer.customer_key,
        version=customer.version + anonymous.version,
        first_seen=min(customer.first_seen, anonymous.first_seen),
        last_seen=max(customer.last_seen, anonymous.last_seen),
        last_active=_latest(customer.last_active, anonymous.last_active),
        touchpoints=customer.touchpoints + anonymous.touchpoints,
        by_type=_add_counts(customer.by_type, anonymous.by_type),
        by_channel=_add_counts(customer.by_channel, anonymous.by_channel),
        purchases=customer.purchases + anonymous.purchases,
        revenue=_add_money(customer.revenue, anonymous.revenue),
        refunds=_add_money(customer.refunds, anonymous.refunds),
        cases=_keep_latest(
            _merge_marks(customer.cases, anonymous.cases),
            config.case_limit,
            lambda item: (item[1].last_activity, item[0]),
        ),
        last_csat=_latest_score(customer.last_csat, anonymous.last_csat),
        last_nps=_latest_score(customer.last_nps, anonymous.last_nps),
        recent=recent,
        checkpoint=checkpoint,
        anonymous_ids=_link_anonymous_ids(customer.anonymous_ids, linked, config),
    )
    added, retracted = _difference((*customer_before, *anonymous_before), after)
    return JourneyUpdate(merged, added, retracted)


def window_transitions(state: JourneyState) -> tuple[Transition, ...]:
    """The transitions of the recent window, which later events may still retract."""
    return _restage(state.customer_key, state.checkpoint, state.recent)[1]


def is_churned_by_inactivity(state: JourneyState, as_of: datetime, *, days: int = 90) -> bool:
    """True when a customer who has bought has shown no activity for `days` up to `as_of`.

    Prospects who go quiet are not churned: they were never customers. Ad
    impressions and sent emails are not activity (see `JourneyState.last_active`).
    """
    if as_of.utcoffset() is None:
        raise ValueError("as_of must be an aware datetime")
    if not state.has_purchased or state.last_active is None:
        return False
    return as_of - state.last_active >= timedelta(days=days)


def stage_as_of(state: JourneyState, as_of: datetime, config: JourneyConfig) -> Stage:
    """The stage at `as_of`: the stored stage, or churned once the customer went quiet."""
    if is_churned_by_inactivity(state, as_of, days=config.inactivity_days):
        return Stage.CHURNED
    return state.stage


# --- the window -------------------------------------------------------------


def _fold(start: Checkpoint, entries: Iterable[RecentTouchpoint]) -> Checkpoint:
    cursor = start
    for entry in entries:
        cursor = cursor.after(entry)
    return cursor


def _cursor_at(
    checkpoint: Checkpoint, window: Sequence[RecentTouchpoint], position: int
) -> Checkpoint:
    """`_fold(checkpoint, window[:position])` without building a checkpoint per entry.

    The window is sorted, so its entry before `position` is the newest of the prefix.
    """
    if position == 0:
        return checkpoint
    last = window[position - 1]
    purchased = checkpoint.has_purchased or any(
        entry.signal is StageSignal.PURCHASE for entry in window[:position]
    )
    if checkpoint.last_occurred_at is not None and last.occurred_at < checkpoint.last_occurred_at:
        return replace(checkpoint, stage=last.stage, has_purchased=purchased)
    return Checkpoint(last.stage, purchased, last.type, last.occurred_at)


def _restage(
    customer_key: str, start: Checkpoint, entries: Sequence[RecentTouchpoint]
) -> tuple[tuple[RecentTouchpoint, ...], tuple[Transition, ...]]:
    """Replay the stage rule over `entries` (sorted) from `start`: new entries, transitions."""
    cursor = start
    restaged: list[RecentTouchpoint] = []
    transitions: list[Transition] = []
    for entry in entries:
        stage = advance_stage(cursor.stage, entry.signal, has_purchased=cursor.has_purchased)
        if stage is not cursor.stage:
            transitions.append(
                Transition(
                    customer_key=customer_key,
                    from_stage=cursor.stage,
                    to_stage=stage,
                    from_type=cursor.last_type,
                    to_type=entry.type,
                    event_id=entry.event_id,
                    occurred_at=entry.occurred_at,
                )
            )
        if stage is not entry.stage:
            entry = replace(entry, stage=stage)
        restaged.append(entry)
        cursor = cursor.after(entry)
    return tuple(restaged), tuple(transitions)


def _trim(
    checkpoint: Checkpoint, entries: Sequence[RecentTouchpoint], config: JourneyConfig
) -> tuple[Checkpoint, tuple[RecentTouchpoint, ...]]:
    overflow = max(0, len(entries) - config.recent_limit)
    return _fold(checkpoint, entries[:overflow]), tuple(entries[overflow:])


def _difference(
    before: Sequence[Transition], after: Sequence[Transition]
) -> tuple[tuple[Transition, ...], tuple[Transition, ...]]:
    """(added, retracted): transitions only in `after`, and only in `before`."""
    before_ids = {t.transition_id for t in before}
    after_ids = {t.transition_id for t in after}
    added = tuple(t for t in after if t.transition_id not in before_ids)
    retracted = tuple(t for t in before if t.transition_id not in after_ids)
    return added, retracted


# --- counts -----------------------------------------------------------------


def blank_journey(customer_key: str, at: datetime) -> JourneyState:
    """A journey with no touchpoint yet, first seen at `at`."""
    return JourneyState(
        customer_key=customer_key,
        version=0,
        first_seen=at,
        last_seen=at,
        last_active=None,
        touchpoints=0,
        by_type={},
        by_channel={},
        purchases=0,
        revenue={},
        refunds={},
        cases={},
        last_csat=None,
        last_nps=None,
        recent=(),
        checkpoint=Checkpoint(),
        anonymous_ids={},
    )


def _tally(
    state: JourneyState, tp: Touchpoint, signal: StageSignal, config: JourneyConfig
) -> JourneyState:
    """Everything but the window: exact whatever the arrival order."""
    at = tp.occurred_at
    props = tp.properties
    revenue, refunds = state.revenue, state.refunds
    if isinstance(props, PurchaseProperties):
        revenue = _add_money(revenue, {props.currency: props.revenue})
    elif isinstance(props, RefundProperties):
        refunds = _add_money(refunds, {props.currency: props.amount})
    last_csat, last_nps = state.last_csat, state.last_nps
    if isinstance(props, SurveyResponseProperties):
        mark = ScoreMark(props.score, at, tp.event_id)
        if props.survey == "csat":
            last_csat = _latest_score(last_csat, mark)
        elif props.survey == "nps":
            last_nps = _latest_score(last_nps, mark)
    last_active = state.last_active
    if tp.type not in _PASSIVE_TYPES:
        last_active = _latest(last_active, at)
    anonymous_ids = state.anonymous_ids
    if tp.anonymous_id is not None and tp.anonymous_id != state.customer_key:
        anonymous_ids = _link_anonymous_ids(anonymous_ids, {tp.anonymous_id: at}, config)
    return replace(
        state,
        version=state.version + 1,
        first_seen=min(state.first_seen, at),
        last_seen=max(state.last_seen, at),
        last_active=last_active,
        touchpoints=state.touchpoints + 1,
        by_type=_add_counts(state.by_type, {tp.type: 1}),
        by_channel=_add_counts(state.by_channel, {str(tp.channel): 1}),
        purchases=state.purchases + int(signal is StageSignal.PURCHASE),
        revenue=revenue,
        refunds=refunds,
        cases=_mark_case(state.cases, tp, config),
        last_csat=last_csat,
        last_nps=last_nps,
        anonymous_ids=anonymous_ids,
    )


def _mark_case(
    cases: Mapping[str, CaseMark], tp: Touchpoint, config: JourneyConfig
) -> Mapping[str, CaseMark]:
    if tp.case_id is None:
        return cases
    if tp.type in _CASE_OPENING_TYPES:
        mark = CaseMark(opened_at=tp.occurred_at)
    elif tp.type in _CASE_RESOLVING_TYPES:
        mark = CaseMark(resolved_at=tp.occurred_at)
    else:
        return cases
    return _keep_latest(
        _merge_marks(cases, {tp.case_id: mark}),
        config.case_limit,
        lambda item: (item[1].last_activity, item[0]),
    )


def _merge_marks(
    first: Mapping[str, CaseMark], second: Mapping[str, CaseMark]
) -> dict[str, CaseMark]:
    merged = dict(first)
    for case_id, mark in second.items():
        known = merged.get(case_id)
        merged[case_id] = (
            mark
            if known is None
            else CaseMark(
                _latest(known.opened_at, mark.opened_at),
                _latest(known.resolved_at, mark.resolved_at),
            )
        )
    return merged


def _link_anonymous_ids(
    known: Mapping[str, datetime], seen: Mapping[str, datetime], config: JourneyConfig
) -> dict[str, datetime]:
    linked = dict(known)
    for anonymous_id, at in seen.items():
        linked[anonymous_id] = max(at, linked.get(anonymous_id, at))
    return _keep_latest(linked, config.anonymous_id_limit, lambda item: (item[1], item[0]))


_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")


def _keep_latest(
    items: dict[_K, _V], limit: int, order: Callable[[tuple[_K, _V]], Any]
) -> dict[_K, _V]:
    """At most `limit` items, the greatest by `order` (event time, then key: deterministic)."""
    if len(items) <= limit:
        return items
    return dict(sorted(items.items(), key=order, reverse=True)[:limit])


def _add_counts(first: Mapping[str, int], second: Mapping[str, int]) -> dict[str, int]:
    total = dict(first)
    for name, count in second.items():
        total[name] = total.get(name, 0) + count
    return total


def _add_money(first: Mapping[str, float], second: Mapping[str, float]) -> dict[str, float]:
    total = dict(first)
    for currency, amount in second.items():
        total[currency] = round(total.get(currency, 0.0) + amount, _MONEY_DECIMALS)
    return total


def _latest(first: datetime | None, second: datetime | None) -> datetime | None:
    if first is None:
        return second
    if second is None:
        return first
    return max(first, second)


def _latest_score(first: ScoreMark | None, second: ScoreMark | None) -> ScoreMark | None:
    if first is None:
        return second
    if second is None:
        return first
    return second if second.order > first.order else first


def _value(stage: Stage | None) -> str | None:
    return None if stage is None else stage.value


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat()


def _from_iso(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def _score_dict(mark: ScoreMark | None) -> dict[str, Any] | None:
    if mark is None:
        return None
    return {"score": mark.score, "at": mark.at.isoformat(), "event_id": mark.event_id}


def _score_from(data: Mapping[str, Any] | None) -> ScoreMark | None:
    if data is None:
        return None
    return ScoreMark(data["score"], datetime.fromisoformat(data["at"]), data["event_id"])
