"""Thresholds, severities and on/off of every friction rule, with documented defaults.

A TOML file overrides any of them; what is not in the file keeps its default:

    allowed_lateness = "5m"          # a deadline is reported once its partition has seen
                                     # an event this much past it
    max_lateness = "7d"              # how far behind its customer's newest event time a
                                     # touchpoint may arrive and still be placed exactly

    [rules.sla_breach]
    first_response = { chat = "5m", email = "12h" }
    resolution = { default = "3d" }

    [rules.checkout_abandoned]
    enabled = false

Durations are "90s", "10m", "4h", "3d", "2w" (or a number of seconds). `journey friction
rules` prints the effective table.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Final

from projections.durations import (
    DAY_MS,
    HOUR_MS,
    MINUTE_MS,
    DurationError,
    duration_ms,
    format_duration,
)
from projections.errors import ConfigurationError
from schemas.envelope import Channel
from schemas.friction import Severity

MINUTE: Final = MINUTE_MS
HOUR: Final = HOUR_MS
DAY: Final = DAY_MS

DEFAULT_CHANNEL: Final = "default"
SEVERITY_ORDER: Final = (Severity.LOW, Severity.MEDIUM, Severity.HIGH, Severity.CRITICAL)


class FrictionConfigError(ValueError, ConfigurationError):
    """The friction rules file is unreadable or names an unknown rule, key or value."""


def parse_duration_ms(value: object, where: str) -> int:
    """Milliseconds of "90s" / "10m" / "4h" / "3d" / "2w" or a number of seconds
    (projections/durations.py, the grammar every duration option shares)."""
    try:
        return duration_ms(value)
    except DurationError as exc:
        if exc.negative:
            raise FrictionConfigError(
                f"{where}: a duration must be a finite number of seconds >= 0, got {value!r}"
            ) from None
        raise FrictionConfigError(
            f"{where}: expected a duration like \"90s\", \"10m\", \"4h\" or \"3d\", got {value!r}"
        ) from None


@dataclass(frozen=True, slots=True)
class RuleConfig:
    """What every rule has: on/off and the severity of its plain case."""

    enabled: bool = True
    severity: Severity = Severity.MEDIUM


@dataclass(frozen=True, slots=True)
class RepeatContactConfig(RuleConfig):
    """A second (third, ...) inbound contact about one case, or a new case about the topic
    of an unresolved case opened within `topic_window`: a first-contact-resolution failure."""

    severity: Severity = Severity.MEDIUM
    severe_from: int = 3  # the contact number from which it is `severe`
    severe: Severity = Severity.HIGH
    topic_window: int = 7 * DAY


@dataclass(frozen=True, slots=True)
class SlaBreachConfig(RuleConfig):
    """No first response (agent_response, outbound contact or resolution) within the
    channel's first-response deadline, or no case_resolved within its resolution deadline,
    counted from the case's first contact (a reopen starts a new resolution deadline)."""

    severity: Severity = Severity.MEDIUM  # a missed first response
    resolution_severity: Severity = Severity.HIGH
    first_response: dict[str, int] = field(default_factory=lambda: {
        "phone": 1 * HOUR, "chat": 10 * MINUTE, "email": 24 * HOUR, "social": 2 * HOUR,
        "sms": 4 * HOUR, "in_person": 1 * HOUR, "mail_fax": 72 * HOUR,
        DEFAULT_CHANNEL: 24 * HOUR,
    })
    resolution: dict[str, int] = field(default_factory=lambda: {
        "phone": 24 * HOUR, "chat": 24 * HOUR, "email": 72 * HOUR, "social": 48 * HOUR,
        "sms": 48 * HOUR, "in_person": 24 * HOUR, "mail_fax": 7 * DAY,
        DEFAULT_CHANNEL: 72 * HOUR,
    })

    def first_response_ms(self, channel: str) -> int:
        return self.first_response.get(channel, self.first_response[DEFAULT_CHANNEL])

    def resolution_ms(self, channel: str) -> int:
        return self.resolution.get(channel, self.resolution[DEFAULT_CHANNEL])


@dataclass(frozen=True, slots=True)
class UnreachableHelpConfig(RuleConfig):
    """An abandoned contact queue or IVR call, a wait above `long_wait`, or a chatbot
    session that neither resolved nor handed off."""

    severity: Severity = Severity.MEDIUM  # long wait, IVR abandoned, chatbot dead end
    abandoned_severity: Severity = Severity.HIGH  # a contact abandoned in the queue
    long_wait: dict[str, int] = field(default_factory=lambda: {
        "phone": 10 * MINUTE, "chat": 5 * MINUTE, DEFAULT_CHANNEL: 30 * MINUTE,
    })

    def long_wait_ms(self, channel: str) -> int:
        return self.long_wait.get(channel, self.long_wait[DEFAULT_CHANNEL])


@dataclass(frozen=True, slots=True)
class EscalationConfig(RuleConfig):
    """Every escalation; the second and later of one case are `repeated`."""

    severity: Severity = Severity.MEDIUM
    repeated: Severity = Severity.HIGH


@dataclass(frozen=True, slots=True)
class FailedOutcomeConfig(RuleConfig):
    """A failed payment, a failed delivery or a refund."""

    severity: Severity = Severity.HIGH  # payment_failed, delivery_failed
    refund_severity: Severity = Severity.MEDIUM


@dataclass(frozen=True, slots=True)
class CheckoutAbandonedConfig(RuleConfig):
    """A checkout_started with no purchase within `within`; carts worth `high_value` or
    more are `high_value_severity`."""

    severity: Severity = Severity.LOW
    within: int = 24 * HOUR
    high_value: float = 200.0
    high_value_severity: Severity = Severity.MEDIUM


@dataclass(frozen=True, slots=True)
class NegativeFeedbackConfig(RuleConfig):
    """CSAT at or below `csat_max`, NPS at or below `nps_max` (a detractor), CES at or above
    `ces_min` (high effort), a review at or below `review_max`, a negative social mention
    (`public_severity` unless marked `public = false`)."""

    severity: Severity = Severity.MEDIUM
    public_severity: Severity = Severity.HIGH
    csat_max: int = 2
    nps_max: int = 6
    ces_min: int = 5
    review_max: int = 2


@dataclass(frozen=True, slots=True)
class ChannelHoppingConfig(RuleConfig):
    """Inbound contacts about one case on `min_channels` or more channels; found again at
    each further channel, `severe` from `severe_from` channels."""

    severity: Severity = Severity.MEDIUM
    min_channels: int = 2
    severe_from: int = 3
    severe: Severity = Severity.HIGH


@dataclass(frozen=True, slots=True)
class CancellationAfterContactConfig(RuleConfig):
    """A subscription_cancelled within `within` after a service contact (`severity`) or
    after other friction (`after_friction_severity`, which wins when both hold)."""

    severity: Severity = Severity.HIGH
    after_friction_severity: Severity = Severity.CRITICAL
    within: int = 30 * DAY


@dataclass(frozen=True, slots=True)
class FrictionConfig:
    """Every rule's settings plus the watermark's allowed lateness and the state bounds."""

    allowed_lateness: int = 5 * MINUTE
    # A touchpoint arriving up to this far behind its customer's newest event time is put
    # in its place and the customer's friction found again (retracting what it
    # disproves); later ones still count for journeys and tables, not for friction.
    max_lateness: int = 7 * DAY
    max_timeline_events: int = 500  # unsealed touchpoints kept per customer for that
    max_cases: int = 50  # open or recent cases kept per customer
    max_checkouts: int = 20  # pending checkouts kept per customer
    case_ttl: int = 30 * DAY  # an untouched case is forgotten after this
    customer_ttl: int = 90 * DAY  # a customer with nothing pending is forgotten after this
    repeat_contact: RepeatContactConfig = field(default_factory=RepeatContactConfig)
    sla_breach: SlaBreachConfig = field(default_factory=SlaBreachConfig)
    unreachable_help: UnreachableHelpConfig = field(default_factory=UnreachableHelpConfig)
    escalation: EscalationConfig = field(default_factory=EscalationConfig)
    failed_outcome: FailedOutcomeConfig = field(default_factory=FailedOutcomeConfig)
    checkout_abandoned: CheckoutAbandonedConfig = field(default_factory=CheckoutAbandonedConfig)
    negative_feedback: NegativeFeedbackConfig = field(default_factory=NegativeFeedbackConfig)
    channel_hopping: ChannelHoppingConfig = field(default_factory=ChannelHoppingConfig)
    cancellation_after_contact: CancellationAfterContactConfig = field(
        default_factory=CancellationAfterContactConfig)

    def rules(self) -> dict[str, RuleConfig]:
        """Rule name -> its settings, in catalogue order."""
        return {name: getattr(self, name) for name in RULES}


RULES: Final = (
    "repeat_contact", "sla_breach", "unreachable_help", "escalation", "failed_outcome",
    "checkout_abandoned", "negative_feedback", "channel_hopping", "cancellation_after_contact",
)
_TOP_LEVEL_DURATIONS: Final = ("allowed_lateness", "max_lateness", "case_ttl", "customer_ttl")
_TOP_LEVEL_COUNTS: Final = ("max_cases", "max_checkouts", "max_timeline_events")
_DURATION_FIELDS: Final = frozenset({"topic_window", "within"})
_CHANNELS: Final = frozenset(c.value for c in Channel) | {DEFAULT_CHANNEL}


def _severity(value: object, where: str) -> Severity:
    try:
        return Severity(str(value))
    except ValueError:
        names = ", ".join(s.value for s in Severity)
        raise FrictionConfigError(f"{where}: unknown severity {value!r} (use {names})") from None


def _rule_settings(name: str, current: RuleConfig, table: Mapping[str, Any],
                   where: str) -> RuleConfig:
    known = {f.name: f for f in fields(current)}
    changes: dict[str, Any] = {}
    for key, value in table.items():
        at = f"{where} [rules.{name}] {key}"
        if key not in known:
            raise FrictionConfigError(
                f"{where}: [rules.{name}] has no setting {key!r} (known: {', '.join(known)})")
        default = getattr(current, key)
        if isinstance(default, Severity):
            changes[key] = _severity(value, at)
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise FrictionConfigError(f"{at}: expected true or false, got {value!r}")
            changes[key] = value
        elif isinstance(default, dict):
            if not isinstance(value, dict):
                raise FrictionConfigError(f"{at}: expected a table like {{ chat = \"5m\" }}")
            merged = dict(default)
            for channel, duration in value.items():
                if channel not in _CHANNELS:
                    raise FrictionConfigError(
                        f"{at}: unknown channel {channel!r} (use {', '.join(sorted(_CHANNELS))})")
                merged[channel] = parse_duration_ms(duration, f"{at}.{channel}")
            changes[key] = merged
        elif key in _DURATION_FIELDS:
            changes[key] = parse_duration_ms(value, at)
        elif isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, int | float) \
                    or math.isnan(value) or value < 0:
                raise FrictionConfigError(f"{at}: expected a non-negative number, got {value!r}")
            changes[key] = float(value)
        else:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise FrictionConfigError(f"{at}: expected a whole number >= 1, got {value!r}")
            changes[key] = value
    return replace(current, **changes)


def config_from_mapping(data: Mapping[str, Any], where: str = "friction config") -> FrictionConfig:
    """A FrictionConfig from parsed TOML; unknown keys are errors, absent keys defaults."""
    config = FrictionConfig()
    changes: dict[str, Any] = {}
    for key, value in data.items():
        if key in _TOP_LEVEL_DURATIONS:
            changes[key] = parse_duration_ms(value, f"{where} {key}")
        elif key in _TOP_LEVEL_COUNTS:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise FrictionConfigError(f"{where} {key}: expected a whole number >= 1")
            changes[key] = value
        elif key == "rules":
            if not isinstance(value, dict):
                raise FrictionConfigError(f"{where}: 'rules' must be a table of [rules.NAME]")
            for name, table in value.items():
                if name not in RULES:
                    raise FrictionConfigError(
                        f"{where}: unknown rule {name!r} (known: {', '.join(RULES)})")
                if not isinstance(table, dict):
                    raise FrictionConfigError(f"{where}: [rules.{name}] must be a table")
                changes[name] = _rule_settings(name, getattr(config, name), table, where)
        else:
            raise FrictionConfigError(
                f"{where}: unknown setting {key!r} (known: "
                f"{', '.join((*_TOP_LEVEL_DURATIONS, *_TOP_LEVEL_COUNTS, 'rules'))})")
    result = replace(config, **changes)
    if result.max_lateness < result.allowed_lateness:
        raise FrictionConfigError(
            f"{where}: max_lateness ({format_duration(result.max_lateness)}) must be at least "
            f"allowed_lateness ({format_duration(result.allowed_lateness)})")
    return result


def load_config(path: Path | None) -> FrictionConfig:
    """The defaults, overridden by the TOML file at `path` when given."""
    if path is None:
        return FrictionConfig()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FrictionConfigError(
            f"friction config {path} does not exist: fix JOURNEY_FRICTION_CONFIG") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise FrictionConfigError(f"friction config {path} is not valid TOML: {exc}") from None
    return config_from_mapping(data, str(path))


def describe_rules(config: FrictionConfig) -> list[tuple[str, bool, str, str]]:
    """(rule, enabled, severities, thresholds) rows for `journey friction rules`."""
    rows = []
    for name, rule in config.rules().items():
        severities, thresholds = [], []
        for f in fields(rule):
            if f.name == "enabled":
                continue
            value = getattr(rule, f.name)
            if isinstance(value, Severity):
                severities.append(f"{f.name}={value.value}")
            elif isinstance(value, dict):
                spelled = ", ".join(f"{k} {format_duration(v)}" for k, v in value.items())
                thresholds.append(f"{f.name}: {spelled}")
            elif f.name in _DURATION_FIELDS:
                thresholds.append(f"{f.name}={format_duration(value)}")
            else:
                thresholds.append(f"{f.name}={value:g}" if isinstance(value, float)
                                  else f"{f.name}={value}")
        rows.append((name, rule.enabled, "; ".join(severities), "; ".join(thresholds)))
    return rows


def config_as_dict(config: FrictionConfig) -> dict[str, Any]:
    """The effective configuration as TOML-shaped data (durations spelled out)."""
    def spell(name: str, value: Any) -> Any:
        if isinstance(value, Severity):
            return value.value
        if isinstance(value, dict):
            return {k: format_duration(v) for k, v in value.items()}
        if name in _DURATION_FIELDS or name in _TOP_LEVEL_DURATIONS:
            return format_duration(value)
        return value

    out: dict[str, Any] = {n: spell(n, getattr(config, n))
                           for n in (*_TOP_LEVEL_DURATIONS, *_TOP_LEVEL_COUNTS)}
    out["rules"] = {name: {f.name: spell(f.name, getattr(rule, f.name)) for f in fields(rule)}
                    for name, rule in config.rules().items()}
    return out
