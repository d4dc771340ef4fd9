"""The friction rules as pure functions: customer state + one touchpoint + thresholds.

`detect` applies one touchpoint (as the `FrictionSignal` the rules read of it): it
tracks the customer's stage and support cases, then runs every enabled rule, each
`detect_<rule>(state, signal, config)` returning the new state and the friction it
found. `expire` is the other half: given a moment of event time, it reports the
deadlines that passed (a first response or resolution never given, a checkout never
bought) and forgets what is too old to matter. Neither reads a clock or does I/O: time
comes from the events and the watermark. `projections.friction.timeline` applies a
customer's touchpoints in event-time order with these two, whatever order they arrive in.

A contact is an inbound `support_contact` (direction inbound or unset) or a
`billing_inquiry`; the first contact of an unknown case opens it. A first response is
an `agent_response`, an outbound `support_contact` or a `case_resolved` of the case.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Final

from projections.durations import format_duration
from projections.friction.config import (
    CancellationAfterContactConfig,
    ChannelHoppingConfig,
    CheckoutAbandonedConfig,
    EscalationConfig,
    FailedOutcomeConfig,
    FrictionConfig,
    NegativeFeedbackConfig,
    RepeatContactConfig,
    SlaBreachConfig,
    UnreachableHelpConfig,
)
from projections.friction.signal import FrictionSignal, signal_of
from projections.friction.state import (
    CaseTrack,
    EarlyAnswer,
    FrictionState,
    Mark,
    PendingCheckout,
)
from projections.journey import Stage, StageSignal, advance_stage
from schemas.friction import Severity
from schemas.touchpoint import Touchpoint

# Rules whose variants can share evidence: the kind is part of their friction id.
KIND_IN_ID: Final = frozenset({"sla_breach"})
_RESOLVED_AFTER: Final = {"case_resolved": True, "case_reopened": False}


@dataclass(frozen=True, slots=True)
class Finding:
    """One friction found, before the stream stamps ids and processing time on it."""

    rule: str
    kind: str
    severity: Severity
    occurred_at: int  # epoch ms: the last triggering event, or the deadline of a breach
    evidence: tuple[str, ...]
    message: str
    case_id: str | None = None
    channel: str | None = None
    stage: str | None = None  # the customer's stage when it was found (set by `detect`)


Detected = tuple[FrictionState, list[Finding]]


# ---- tracking shared by the case rules -----------------------------------------------


def track(state: FrictionState, tp: FrictionSignal, config: FrictionConfig) -> FrictionState:
    """Stage, last contact, purchases and the case's contacts and channels after `tp`."""
    at = tp.at
    signal = StageSignal(tp.stage_signal)
    current = Stage(state.stage) if state.stage else None
    stage = advance_stage(current, signal, has_purchased=state.has_purchased)
    state = replace(state, stage=stage.value, last_seen=max(state.last_seen, at),
                    has_purchased=state.has_purchased or signal is StageSignal.PURCHASE)
    if tp.type == "purchase":
        state = state.with_purchase(at)
    if tp.is_contact:
        last = state.last_contact
        if last is None or at >= last.at:
            state = replace(state, last_contact=Mark(at, tp.event_id))
    if tp.case_id is None or not tp.is_contact:
        case = state.case(tp.case_id) if tp.case_id is not None else None
        if case is None and tp.case_id is not None and tp.is_first_response:
            state = state.with_early(EarlyAnswer(tp.case_id, at, tp.type == "case_resolved"))
        if case is not None:
            resolved = _RESOLVED_AFTER.get(tp.type, case.resolved)
            state = state.with_case(
                replace(case, resolved=resolved, last_at=max(case.last_at, at)),
                config.max_cases)
        return state
    case = state.case(tp.case_id)
    channel = tp.channel
    if case is None:
        topic = tp.topic
        early = state.early_for(tp.case_id, at)
        case = CaseTrack(case_id=tp.case_id, opened_at=at, channel=channel, topic=topic,
                         first_event=tp.event_id, contacts=1,
                         channels=((channel, tp.event_id),), resolution_from=tp.event_id,
                         resolved=any(e.resolves for e in early),
                         last_at=max([at, *(e.at for e in early)]))
    else:
        channels = case.channels
        if channel not in case.channel_ids():
            channels = (*channels, (channel, tp.event_id))
        # The customer came back about a resolved case: it was not resolved after all.
        reopened_by = tp.event_id if case.resolved else case.reopened_by
        case = replace(case, contacts=case.contacts + 1, channels=channels,
                       last_at=max(case.last_at, at), resolved=False, reopened_by=reopened_by)
    return state.with_case(case, config.max_cases)


def _opened_by(state: FrictionState, tp: FrictionSignal) -> CaseTrack | None:
    """The case `tp` just opened (after `track`), else None."""
    if tp.case_id is None or not tp.is_contact:
        return None
    case = state.case(tp.case_id)
    return case if case is not None and case.first_event == tp.event_id else None


# ---- the rules --------------------------------------------------------------------------


def detect_repeat_contact(state: FrictionState, tp: FrictionSignal,
                          config: RepeatContactConfig) -> Detected:
    """A further contact about a case, or a new case about the topic of an open one."""
    if tp.case_id is None or not tp.is_contact:
        return state, []
    case = state.case(tp.case_id)
    if case is None:
        return state, []
    at = tp.at
    if case.first_event != tp.event_id:
        severity = config.severe if case.contacts >= config.severe_from else config.severity
        return state, [Finding(
            "repeat_contact", "case", severity, at, (case.first_event, tp.event_id),
            f"Contact number {case.contacts} about case {case.case_id}: "
            "the first contact did not resolve it.",
            case_id=case.case_id, channel=tp.channel)]
    earlier = [c for c in state.cases
               if c.case_id != case.case_id and not c.resolved and c.topic == case.topic
               and c.topic is not None and 0 <= at - c.opened_at <= config.topic_window]
    if not earlier:
        return state, []
    previous = max(earlier, key=lambda c: (c.opened_at, c.case_id))
    return state, [Finding(
        "repeat_contact", "topic", config.severity, at, (previous.first_event, tp.event_id),
        f"New case {case.case_id} about {case.topic!r} while case {previous.case_id} on the "
        "same topic is still open.", case_id=case.case_id, channel=tp.channel)]


def detect_sla_breach(state: FrictionState, tp: FrictionSignal,
                      config: SlaBreachConfig) -> Detected:
    """Starts and stops the case's first-response and resolution clocks; `expire_sla`
    reports the deadlines that pass."""
    if tp.case_id is None:
        return state, []
    case = state.case(tp.case_id)
    if case is None:
        return state, []
    at = tp.at
    opened = _opened_by(state, tp)
    if opened is not None:
        first_due: int | None = at + config.first_response_ms(case.channel)
        resolution_due: int | None = at + config.resolution_ms(case.channel)
        early = state.early_for(case.case_id, at)
        if any(e.at <= at + config.first_response_ms(case.channel) for e in early):
            first_due = None
        if any(e.resolves and e.at <= at + config.resolution_ms(case.channel) for e in early):
            resolution_due = None
        case = replace(case, first_response_due=first_due, resolution_due=resolution_due)
        state = replace(state, early=tuple(e for e in state.early if e.case_id != case.case_id))
    else:
        if tp.is_first_response and case.first_response_due is not None \
                and at <= case.first_response_due:
            case = replace(case, first_response_due=None)
        if tp.type == "case_resolved":
            in_time = case.resolution_due is not None and at <= case.resolution_due
            case = replace(case, resolution_due=None if in_time else case.resolution_due)
        elif (tp.type == "case_reopened" or case.reopened_by == tp.event_id) \
                and case.resolution_due is None:
            case = replace(case, resolution_due=at + config.resolution_ms(case.channel),
                           resolution_from=tp.event_id)
    return state.with_case(case, len(state.cases) or 1), []


def expire_sla(state: FrictionState, watermark: int, config: SlaBreachConfig) -> Detected:
    """The first-response and resolution deadlines at or before the watermark."""
    found: list[Finding] = []
    cases = []
    for case in state.cases:
        if case.first_response_due is not None and case.first_response_due <= watermark:
            found.append(Finding(
                "sla_breach", "first_response", config.severity, case.first_response_due,
                (case.first_event,),
                f"Case {case.case_id} ({case.channel}) got no response within "
                f"{format_duration(config.first_response_ms(case.channel))}.",
                case_id=case.case_id, channel=case.channel))
            case = replace(case, first_response_due=None)
        if case.resolution_due is not None and case.resolution_due <= watermark:
            found.append(Finding(
                "sla_breach", "resolution", config.resolution_severity, case.resolution_due,
                (case.resolution_from,),
                f"Case {case.case_id} ({case.channel}) was not resolved within "
                f"{format_duration(config.resolution_ms(case.channel))}.",
                case_id=case.case_id, channel=case.channel))
            case = replace(case, resolution_due=None)
        cases.append(case)
    return (replace(state, cases=tuple(cases)) if found else state), found


def detect_unreachable_help(state: FrictionState, tp: FrictionSignal,
                            config: UnreachableHelpConfig) -> Detected:
    """An abandoned queue or IVR call, a long wait, a chatbot dead end."""
    at = tp.at
    channel = tp.channel
    finding: Finding | None = None
    if tp.type == "support_contact":
        if tp.abandoned:
            finding = Finding("unreachable_help", "queue_abandoned", config.abandoned_severity,
                              at, (tp.event_id,),
                              f"The customer gave up waiting for an agent ({channel}).")
        elif tp.wait_seconds is not None and \
                tp.wait_seconds * 1000 > config.long_wait_ms(channel):
            finding = Finding("unreachable_help", "long_wait", config.severity, at,
                              (tp.event_id,),
                              f"The customer waited {tp.wait_seconds:.0f}s for an agent "
                              f"({channel}, limit "
                              f"{format_duration(config.long_wait_ms(channel))}).")
    elif tp.type == "ivr_session" and tp.abandoned:
        finding = Finding("unreachable_help", "ivr_abandoned", config.severity, at,
                          (tp.event_id,), "The customer hung up in the phone menu.")
    elif tp.type == "chatbot_session" and not tp.resolved and not tp.handed_off:
        finding = Finding("unreachable_help", "chatbot_dead_end", config.severity, at,
                          (tp.event_id,),
                          "A chatbot session neither solved the problem "
                          "nor handed off to a person.")
    if finding is None:
        return state, []
    return state, [replace(finding, case_id=tp.case_id, channel=channel)]


def detect_escalation(state: FrictionState, tp: FrictionSignal,
                      config: EscalationConfig) -> Detected:
    """Every escalation; the second and later of a case are more severe."""
    if tp.type != "escalation":
        return state, []
    count = 1
    case = state.case(tp.case_id) if tp.case_id is not None else None
    if case is not None:
        count = case.escalations + 1
        state = state.with_case(replace(case, escalations=count), len(state.cases))
    severity = config.repeated if count >= 2 else config.severity
    to = tp.to or "another team"
    return state, [Finding(
        "escalation", "repeated" if count >= 2 else "first", severity, tp.at,
        (tp.event_id,), f"Case {tp.case_id} was escalated to {to} (escalation {count}).",
        case_id=tp.case_id, channel=tp.channel)]


_OUTCOMES: Final = {
    "payment_failed": "A payment failed.",
    "delivery_failed": "A delivery failed.",
    "refund": "An order was refunded.",
}


def detect_failed_outcome(state: FrictionState, tp: FrictionSignal,
                          config: FailedOutcomeConfig) -> Detected:
    """A failed payment or delivery, or a refund."""
    message = _OUTCOMES.get(tp.type)
    if message is None:
        return state, []
    severity = config.refund_severity if tp.type == "refund" else config.severity
    reason = tp.reason
    text = message[:-1] + (f": {reason}." if reason else ".")
    return state, [Finding("failed_outcome", tp.type, severity, tp.at, (tp.event_id,),
                           text, case_id=tp.case_id, channel=tp.channel)]


def detect_checkout_abandoned(state: FrictionState, tp: FrictionSignal,
                              config: CheckoutAbandonedConfig, *, limit: int = 20) -> Detected:
    """Keeps checkouts pending until a purchase; `expire_checkouts` reports the rest."""
    at = tp.at
    if tp.type == "purchase":
        pending = tuple(c for c in state.checkouts if not c.at <= at <= c.due)
        return (replace(state, checkouts=pending) if pending != state.checkouts else state), []
    if tp.type != "checkout_started" or tp.cart_value is None:
        return state, []
    due = at + config.within
    if any(at <= bought <= due for bought in state.purchases):
        return state, []
    # A checkout restarted before the earlier one's deadline continues that attempt.
    kept = [c for c in state.checkouts if not (c.at <= at < c.due)]
    kept.append(PendingCheckout(at, tp.event_id, tp.cart_value, due, tp.channel))
    kept.sort(key=lambda c: (c.at, c.event_id))
    return replace(state, checkouts=tuple(kept[-limit:])), []


def expire_checkouts(state: FrictionState, watermark: int,
                     config: CheckoutAbandonedConfig) -> Detected:
    """Checkouts whose deadline passed without a purchase."""
    due = [c for c in state.checkouts if c.due <= watermark]
    if not due:
        return state, []
    found = [Finding(
        "checkout_abandoned", "checkout",
        config.high_value_severity if c.cart_value >= config.high_value else config.severity,
        c.due, (c.event_id,),
        f"A checkout worth {c.cart_value:.2f} was not completed within "
        f"{format_duration(config.within)}.", channel=c.channel) for c in due]
    rest = tuple(c for c in state.checkouts if c.due > watermark)
    return replace(state, checkouts=rest), found


def detect_negative_feedback(state: FrictionState, tp: FrictionSignal,
                             config: NegativeFeedbackConfig) -> Detected:
    """Low CSAT, NPS detractor, high effort, poor review, negative social mention."""
    at = tp.at
    found: tuple[str, Severity, str] | None = None
    if tp.type == "survey_response" and tp.score is not None:
        score = tp.score
        if tp.survey == "csat" and score <= config.csat_max:
            found = ("csat", config.severity, f"A CSAT answer of {score} out of 5.")
        elif tp.survey == "nps" and score <= config.nps_max:
            found = ("nps", config.severity, f"An NPS answer of {score}: a detractor.")
        elif tp.survey == "ces" and score >= config.ces_min:
            found = ("ces", config.severity, f"A customer effort score of {score} out of 7.")
    elif tp.type == "review" and tp.rating is not None and tp.rating <= config.review_max:
        found = ("review", config.public_severity, f"A public review of {tp.rating} stars.")
    elif tp.type == "social_mention" and tp.sentiment == "negative":
        public = tp.public is not False
        found = ("social", config.public_severity if public else config.severity,
                 "A negative public social media post." if public
                 else "A negative private social media message.")
    if found is None:
        return state, []
    kind, severity, message = found
    case_id = tp.case_id or tp.about_case
    return state, [Finding("negative_feedback", kind, severity, at, (tp.event_id,), message,
                           case_id=case_id, channel=tp.channel)]


def detect_channel_hopping(state: FrictionState, tp: FrictionSignal,
                           config: ChannelHoppingConfig) -> Detected:
    """A contact that takes a case to a new channel, once it spans `min_channels`."""
    if tp.case_id is None or not tp.is_contact:
        return state, []
    case = state.case(tp.case_id)
    if case is None or case.channel_ids().get(tp.channel) != tp.event_id:
        return state, []
    n = len(case.channels)
    if n < config.min_channels:
        return state, []
    names = ", ".join(c for c, _ in case.channels)
    return state, [Finding(
        "channel_hopping", f"{n}_channels", config.severe if n >= config.severe_from
        else config.severity, tp.at, tuple(e for _, e in case.channels),
        f"Case {case.case_id} has now been raised on {n} channels ({names}).",
        case_id=case.case_id, channel=tp.channel)]


def detect_cancellation_after_contact(state: FrictionState, tp: FrictionSignal,
                                      config: CancellationAfterContactConfig) -> Detected:
    """A cancellation soon after friction, or after a service contact."""
    if tp.type != "subscription_cancelled":
        return state, []
    at = tp.at

    def recent(mark: Mark | None) -> bool:
        return mark is not None and 0 <= at - mark.at <= config.within

    days = format_duration(config.within)
    if recent(state.last_friction):
        assert state.last_friction is not None
        return state, [Finding(
            "cancellation_after_contact", "after_friction", config.after_friction_severity, at,
            (tp.event_id, state.last_friction.event_id),
            f"The customer cancelled within {days} of friction.", channel=tp.channel)]
    if recent(state.last_contact):
        assert state.last_contact is not None
        return state, [Finding(
            "cancellation_after_contact", "after_contact", config.severity, at,
            (tp.event_id, state.last_contact.event_id),
            f"The customer cancelled within {days} of a service contact.",
            channel=tp.channel)]
    return state, []


# ---- applying all rules -----------------------------------------------------------------

Rule = Callable[[FrictionState, FrictionSignal, FrictionConfig], Detected]

RULE_FUNCTIONS: Final[dict[str, Rule]] = {
    "repeat_contact": lambda s, tp, c: detect_repeat_contact(s, tp, c.repeat_contact),
    "sla_breach": lambda s, tp, c: detect_sla_breach(s, tp, c.sla_breach),
    "unreachable_help": lambda s, tp, c: detect_unreachable_help(s, tp, c.unreachable_help),
    "escalation": lambda s, tp, c: detect_escalation(s, tp, c.escalation),
    "failed_outcome": lambda s, tp, c: detect_failed_outcome(s, tp, c.failed_outcome),
    "checkout_abandoned": lambda s, tp, c: detect_checkout_abandoned(
        s, tp, c.checkout_abandoned, limit=c.max_checkouts),
    "negative_feedback": lambda s, tp, c: detect_negative_feedback(s, tp, c.negative_feedback),
    "channel_hopping": lambda s, tp, c: detect_channel_hopping(s, tp, c.channel_hopping),
    # last: it reads the friction the others found for this very touchpoint
    "cancellation_after_contact": lambda s, tp, c: detect_cancellation_after_contact(
        s, tp, c.cancellation_after_contact),
}


def _remember(state: FrictionState, found: Sequence[Finding]) -> FrictionState:
    latest = max(found, key=lambda f: (f.occurred_at, f.evidence))
    mark = state.last_friction
    if mark is not None and mark.at > latest.occurred_at:
        return state
    return replace(state, last_friction=Mark(latest.occurred_at, latest.evidence[0]))


def detect(state: FrictionState | None, touchpoint: FrictionSignal | Touchpoint,
           config: FrictionConfig) -> Detected:
    """Apply one touchpoint: the new state and the friction every enabled rule found,
    each stamped with the stage the customer is in after it."""
    tp = touchpoint if isinstance(touchpoint, FrictionSignal) else signal_of(touchpoint)
    state = track(state or FrictionState(), tp, config)
    found: list[Finding] = []
    for name, rule in RULE_FUNCTIONS.items():
        if not getattr(config, name).enabled:
            continue
        if name == "cancellation_after_contact" and found:
            state = _remember(state, found)
        state, more = rule(state, tp, config)
        found.extend(more)
    if found:
        state = _remember(state, found)
    return state, [replace(f, stage=state.stage) for f in found]


def expire(state: FrictionState, watermark: int,
           config: FrictionConfig) -> tuple[FrictionState | None, list[Finding]]:
    """Report the deadlines at or before `watermark` and forget what is too old to matter.

    Returns None for a state with nothing left worth keeping.
    """
    found: list[Finding] = []
    if config.sla_breach.enabled:
        state, more = expire_sla(state, watermark, config.sla_breach)
        found.extend(more)
    else:
        state = replace(state, cases=tuple(replace(c, first_response_due=None,
                                                   resolution_due=None) for c in state.cases))
    if config.checkout_abandoned.enabled:
        state, more = expire_checkouts(state, watermark, config.checkout_abandoned)
        found.extend(more)
    else:
        state = replace(state, checkouts=())
    if found:
        state = _remember(state, found)
    cases = tuple(c for c in state.cases if not _forgettable(c, watermark, config))
    if cases != state.cases:
        state = replace(state, cases=cases)
    early = tuple(e for e in state.early if e.at + config.case_ttl > watermark)
    if early != state.early:
        state = replace(state, early=early)
    found = [replace(f, stage=state.stage) for f in found]
    if not state.cases and not state.checkouts and not state.early \
            and state.last_seen + config.customer_ttl <= watermark:
        return None, found
    return state, found


def _forgettable(case: CaseTrack, watermark: int, config: FrictionConfig) -> bool:
    return _dues(case) == [] and _forget_at(case, config) <= watermark


def _dues(case: CaseTrack) -> list[int]:
    return [d for d in (case.first_response_due, case.resolution_due) if d is not None]


def _forget_at(case: CaseTrack, config: FrictionConfig) -> int:
    keep = config.repeat_contact.topic_window if case.resolved else config.case_ttl
    return case.last_at + keep


def next_deadline(state: FrictionState, config: FrictionConfig) -> int:
    """The earliest watermark at which `expire` has something to do for this state.

    Always after the watermark of the `expire` that returned the state: a case is not
    forgotten while a deadline of it is pending, nor a customer while a case or checkout
    is left, so those moments only count once nothing holds them back.
    """
    moments = [m for case in state.cases for m in (_dues(case) or [_forget_at(case, config)])]
    moments.extend(c.due for c in state.checkouts)
    moments.extend(e.at + config.case_ttl for e in state.early)
    return min(moments) if moments else state.last_seen + config.customer_ttl
