"""The friction configuration: documented defaults, TOML overrides and clear errors."""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from projections.durations import format_duration
from projections.friction import RULES, FrictionConfig, FrictionConfigError, load_config
from projections.friction.config import (
    DAY,
    DEFAULT_CHANNEL,
    HOUR,
    MINUTE,
    EscalationConfig,
    RuleConfig,
    SlaBreachConfig,
    config_as_dict,
    config_from_mapping,
    describe_rules,
    parse_duration_ms,
)
from schemas.envelope import Channel
from schemas.friction import Severity

LOW, MEDIUM, HIGH, CRITICAL = Severity.LOW, Severity.MEDIUM, Severity.HIGH, Severity.CRITICAL


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "friction.toml"
    path.write_text(text, encoding="utf-8")
    return path


# --- defaults -----------------------------------------------------------------------------


def test_rules_are_the_catalogue_of_events_md() -> None:
    assert RULES == (
        "repeat_contact", "sla_breach", "unreachable_help", "escalation", "failed_outcome",
        "checkout_abandoned", "negative_feedback", "channel_hopping",
        "cancellation_after_contact")
    config = FrictionConfig()
    assert tuple(config.rules()) == RULES
    assert all(isinstance(rule, RuleConfig) and rule.enabled
               for rule in config.rules().values())


def test_no_file_means_the_defaults() -> None:
    assert load_config(None) == FrictionConfig()
    assert config_from_mapping({}) == FrictionConfig()


def test_documented_defaults() -> None:
    c = FrictionConfig()
    assert (c.allowed_lateness, c.max_cases, c.max_checkouts, c.case_ttl, c.customer_ttl) == (
        5 * MINUTE, 50, 20, 30 * DAY, 90 * DAY)

    r = c.repeat_contact
    assert (r.severity, r.severe_from, r.severe, r.topic_window) == (MEDIUM, 3, HIGH, 7 * DAY)

    s = c.sla_breach
    assert (s.severity, s.resolution_severity) == (MEDIUM, HIGH)
    assert s.first_response == {
        "phone": 1 * HOUR, "chat": 10 * MINUTE, "email": 24 * HOUR, "social": 2 * HOUR,
        "sms": 4 * HOUR, "in_person": 1 * HOUR, "mail_fax": 72 * HOUR,
        DEFAULT_CHANNEL: 24 * HOUR}
    assert s.resolution == {
        "phone": 24 * HOUR, "chat": 24 * HOUR, "email": 72 * HOUR, "social": 48 * HOUR,
        "sms": 48 * HOUR, "in_person": 24 * HOUR, "mail_fax": 7 * DAY,
        DEFAULT_CHANNEL: 72 * HOUR}

    u = c.unreachable_help
    assert (u.severity, u.abandoned_severity) == (MEDIUM, HIGH)
    assert u.long_wait == {"phone": 10 * MINUTE, "chat": 5 * MINUTE, DEFAULT_CHANNEL: 30 * MINUTE}

    assert (c.escalation.severity, c.escalation.repeated) == (MEDIUM, HIGH)
    assert (c.failed_outcome.severity, c.failed_outcome.refund_severity) == (HIGH, MEDIUM)

    k = c.checkout_abandoned
    assert (k.severity, k.within, k.high_value, k.high_value_severity) == (
        LOW, 24 * HOUR, 200.0, MEDIUM)

    n = c.negative_feedback
    assert (n.severity, n.public_severity, n.csat_max, n.nps_max, n.ces_min, n.review_max) == (
        MEDIUM, HIGH, 2, 6, 5, 2)

    h = c.channel_hopping
    assert (h.severity, h.min_channels, h.severe_from, h.severe) == (MEDIUM, 2, 3, HIGH)

    x = c.cancellation_after_contact
    assert (x.severity, x.after_friction_severity, x.within) == (HIGH, CRITICAL, 30 * DAY)


@pytest.mark.parametrize(("channel", "first", "resolution"), [
    ("chat", 10 * MINUTE, 24 * HOUR), ("email", 24 * HOUR, 72 * HOUR),
    ("phone", 1 * HOUR, 24 * HOUR), ("web", 24 * HOUR, 72 * HOUR),
    ("community", 24 * HOUR, 72 * HOUR)])
def test_per_channel_deadlines_fall_back_to_the_default(
        channel: str, first: int, resolution: int) -> None:
    sla = SlaBreachConfig()
    assert (sla.first_response_ms(channel), sla.resolution_ms(channel)) == (first, resolution)


def test_long_wait_falls_back_to_the_default() -> None:
    wait = FrictionConfig().unreachable_help
    assert (wait.long_wait_ms("phone"), wait.long_wait_ms("chat"),
            wait.long_wait_ms("email")) == (10 * MINUTE, 5 * MINUTE, 30 * MINUTE)


def test_configs_do_not_share_their_tables() -> None:
    one, two = SlaBreachConfig(), SlaBreachConfig()
    assert one.first_response is not two.first_response
    one.first_response["chat"] = 1
    assert SlaBreachConfig().first_response["chat"] == 10 * MINUTE


# --- durations ----------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [
    ("90s", 90_000), ("10m", 10 * MINUTE), ("4h", 4 * HOUR), ("3d", 3 * DAY),
    ("2w", 14 * DAY), ("250ms", 250), ("1.5h", 90 * MINUTE), (" 10 m ", 10 * MINUTE),
    ("45", 45_000), (90, 90_000), (1.5, 1500), (0, 0), ("0s", 0)])
def test_parse_duration(value: object, expected: int) -> None:
    assert parse_duration_ms(value, "x") == expected


@pytest.mark.parametrize("value", [
    "ten minutes", "10 minutes", "10min", "", "-5m", "m", "1e3s", True, False, None, [], {},
    -1, -0.5, float("nan"), float("inf")])
def test_bad_durations(value: object) -> None:
    with pytest.raises(FrictionConfigError, match=r"^where: "):
        parse_duration_ms(value, "where")


@pytest.mark.parametrize(("ms", "spelled"), [
    (10 * MINUTE, "10m"), (90_000, "90s"), (DAY, "1d"), (7 * DAY, "1w"), (3 * DAY, "3d"),
    (90 * MINUTE, "90m"), (1500, "1500ms"), (0, "0ms"), (36 * HOUR, "36h")])
def test_format_duration(ms: int, spelled: str) -> None:
    assert format_duration(ms) == spelled
    assert parse_duration_ms(spelled, "x") == ms


# --- TOML overrides -----------------------------------------------------------------------


def test_overrides_from_a_file(tmp_path: Path) -> None:
    path = write(tmp_path, """
allowed_lateness = "2m"
case_ttl = 86400
max_cases = 7

[rules.sla_breach]
first_response = { chat = "5m", email = "12h" }
resolution = { default = "3d", web = "1d" }
resolution_severity = "critical"

[rules.escalation]
severity = "high"

[rules.checkout_abandoned]
enabled = false
within = "1.5h"
high_value = 150

[rules.repeat_contact]
topic_window = "2w"
severe_from = 4
""")
    c = load_config(path)
    defaults = FrictionConfig()
    assert (c.allowed_lateness, c.case_ttl, c.max_cases) == (2 * MINUTE, DAY, 7)
    assert c.sla_breach.first_response == {
        **defaults.sla_breach.first_response, "chat": 5 * MINUTE, "email": 12 * HOUR}
    assert c.sla_breach.first_response_ms("phone") == HOUR  # kept from the defaults
    assert c.sla_breach.resolution == {
        **defaults.sla_breach.resolution, DEFAULT_CHANNEL: 3 * DAY, "web": DAY}
    assert c.sla_breach.resolution_ms("web") == DAY
    assert c.sla_breach.resolution_ms("community") == 3 * DAY
    assert c.sla_breach.resolution_severity is CRITICAL
    assert c.sla_breach.severity is MEDIUM
    assert c.escalation == EscalationConfig(severity=HIGH)
    assert not c.checkout_abandoned.enabled
    assert (c.checkout_abandoned.within, c.checkout_abandoned.high_value) == (90 * MINUTE, 150.0)
    assert isinstance(c.checkout_abandoned.high_value, float)
    assert (c.repeat_contact.topic_window, c.repeat_contact.severe_from) == (14 * DAY, 4)
    # what the file does not name keeps its default
    assert c.max_checkouts == defaults.max_checkouts
    for name in ("unreachable_help", "failed_outcome", "negative_feedback", "channel_hopping",
                 "cancellation_after_contact"):
        assert getattr(c, name) == getattr(defaults, name)
    # and the defaults are left alone
    assert FrictionConfig() == defaults
    assert SlaBreachConfig().first_response["chat"] == 10 * MINUTE


def test_the_example_of_the_module_docstring(tmp_path: Path) -> None:
    path = write(tmp_path, """
allowed_lateness = "5m"          # how far behind its partition's newest event time

[rules.sla_breach]
first_response = { chat = "5m", email = "12h" }
resolution = { default = "3d" }

[rules.checkout_abandoned]
enabled = false
""")
    c = load_config(path)
    assert c == replace(
        FrictionConfig(),
        sla_breach=replace(
            SlaBreachConfig(),
            first_response={**SlaBreachConfig().first_response, "chat": 5 * MINUTE,
                            "email": 12 * HOUR},
            resolution={**SlaBreachConfig().resolution, DEFAULT_CHANNEL: 3 * DAY}),
        checkout_abandoned=replace(FrictionConfig().checkout_abandoned, enabled=False))


def test_every_rule_can_be_disabled(tmp_path: Path) -> None:
    path = write(tmp_path, "".join(f"[rules.{name}]\nenabled = false\n" for name in RULES))
    c = load_config(path)
    assert not any(rule.enabled for rule in c.rules().values())


def test_an_empty_file_is_the_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "# nothing\n")) == FrictionConfig()


# --- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "message"), [
    ('[rules.nope]\nenabled = false\n', r"unknown rule 'nope' \(known: repeat_contact, "),
    ('[rules.sla_breach]\nfirst_reply = { chat = "5m" }\n',
     r"\[rules\.sla_breach\] has no setting 'first_reply' \(known: .*first_response"),
    ('max_case = 3\n', r"unknown setting 'max_case' \(known: allowed_lateness"),
    ('[rules.escalation]\nseverity = "urgent"\n',
     r"\[rules\.escalation\] severity: unknown severity 'urgent' "
     r"\(use low, medium, high, critical\)"),
    ('[rules.escalation]\nrepeated = 3\n', r"unknown severity 3"),
    ('[rules.checkout_abandoned]\nwithin = "a day"\n',
     r"\[rules\.checkout_abandoned\] within: expected a duration like .*'a day'"),
    ('[rules.checkout_abandoned]\nwithin = -60\n', r"within: a duration must be"),
    ('[rules.checkout_abandoned]\nwithin = nan\n', r"within: a duration must be"),
    ('[rules.checkout_abandoned]\nwithin = inf\n', r"within: a duration must be"),
    ('case_ttl = "forever"\n', r"case_ttl: expected a duration"),
    ('[rules.sla_breach]\nfirst_response = { fax = "1h" }\n',
     r"first_response: unknown channel 'fax' \(use .*chat.*default"),
    ('[rules.sla_breach]\nfirst_response = { chat = "soon" }\n',
     r"first_response\.chat: expected a duration"),
    ('[rules.sla_breach]\nfirst_response = "1h"\n', r"first_response: expected a table"),
    ('[rules.unreachable_help]\nlong_wait = { web = 0.5, smoke = "1m" }\n',
     r"unknown channel 'smoke'"),
    ('[rules.escalation]\nenabled = "no"\n', r"enabled: expected true or false, got 'no'"),
    ('[rules.escalation]\nenabled = 0\n', r"enabled: expected true or false"),
    ('[rules.repeat_contact]\nsevere_from = 0\n', r"severe_from: expected a whole number >= 1"),
    ('[rules.repeat_contact]\nsevere_from = 2.5\n', r"severe_from: expected a whole number"),
    ('[rules.channel_hopping]\nmin_channels = true\n', r"min_channels: expected a whole number"),
    ('[rules.checkout_abandoned]\nhigh_value = -1\n', r"high_value: expected a non-negative"),
    ('[rules.checkout_abandoned]\nhigh_value = nan\n', r"high_value: expected a non-negative"),
    ('[rules.checkout_abandoned]\nhigh_value = "200"\n', r"high_value: expected a non-negative"),
    ('max_cases = 0\n', r"max_cases: expected a whole number >= 1"),
    ('max_checkouts = "20"\n', r"max_checkouts: expected a whole number >= 1"),
    ('rules = 3\n', r"'rules' must be a table of \[rules\.NAME\]"),
    ('[rules]\nsla_breach = 5\n', r"\[rules\.sla_breach\] must be a table"),
])
def test_errors_name_the_file_and_the_problem(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(FrictionConfigError, match=message) as caught:
        load_config(path)
    assert str(caught.value).startswith(str(path))


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.toml"
    with pytest.raises(FrictionConfigError, match=r"does not exist") as caught:
        load_config(path)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize("text", ["[rules.sla_breach\n", "allowed_lateness = \n",
                                  "a = 1\na = 2\n", "max_cases = 5 5\n"])
def test_invalid_toml(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(FrictionConfigError, match=r"is not valid TOML") as caught:
        load_config(path)
    assert str(path) in str(caught.value)


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "friction.toml"
    path.write_bytes(b'allowed_lateness = "\xff"\n')
    with pytest.raises(FrictionConfigError, match=r"is not valid TOML"):
        load_config(path)


def test_config_error_is_a_value_error() -> None:
    assert issubclass(FrictionConfigError, ValueError)


def test_mapping_errors_name_the_default_source() -> None:
    with pytest.raises(FrictionConfigError, match=r"^friction config: unknown rule 'x'"):
        config_from_mapping({"rules": {"x": {}}})


# --- describing the effective configuration ----------------------------------------------


def test_describe_rules_lists_every_rule() -> None:
    rows = describe_rules(FrictionConfig())
    assert [row[0] for row in rows] == list(RULES)
    assert all(enabled for _, enabled, _, _ in rows)
    by_rule = {name: (severities, thresholds) for name, _, severities, thresholds in rows}
    assert by_rule["sla_breach"][0] == "severity=medium; resolution_severity=high"
    assert "first_response: phone 1h, chat 10m, email 1d" in by_rule["sla_breach"][1]
    assert "topic_window=1w" in by_rule["repeat_contact"][1]
    assert "severe_from=3" in by_rule["repeat_contact"][1]
    assert "high_value=200" in by_rule["checkout_abandoned"][1]
    assert "within=30d" in by_rule["cancellation_after_contact"][1]
    assert by_rule["failed_outcome"] == ("severity=high; refund_severity=medium", "")


def test_describe_rules_shows_a_disabled_rule() -> None:
    config = replace(FrictionConfig(), escalation=EscalationConfig(enabled=False))
    rows = {name: enabled for name, enabled, _, _ in describe_rules(config)}
    assert rows == {name: name != "escalation" for name in RULES}


def test_config_as_dict_holds_every_rule_and_setting() -> None:
    data = config_as_dict(FrictionConfig())
    assert list(data["rules"]) == list(RULES)
    for name, rule in FrictionConfig().rules().items():
        assert set(data["rules"][name]) == {f.name for f in fields(rule)}
    assert data["allowed_lateness"] == "5m"
    assert data["case_ttl"] == "30d"
    assert data["max_cases"] == 50
    assert data["rules"]["sla_breach"]["first_response"]["chat"] == "10m"
    assert data["rules"]["checkout_abandoned"]["within"] == "1d"
    assert data["rules"]["escalation"] == {"enabled": True, "severity": "medium",
                                           "repeated": "high"}
    orjson.dumps(data)  # plain data, ready for JSON or TOML


@pytest.mark.parametrize("config", [
    FrictionConfig(),
    config_from_mapping({
        "allowed_lateness": "1m", "customer_ttl": "40d", "max_checkouts": 3,
        "rules": {"sla_breach": {"first_response": {"chat": "90s"}, "enabled": False},
                  "checkout_abandoned": {"high_value": 99.5, "severity": "high"},
                  "channel_hopping": {"min_channels": 3, "severe_from": 4}}}),
], ids=["defaults", "custom"])
def test_config_as_dict_loads_back_to_the_same_config(config: FrictionConfig) -> None:
    data: Any = orjson.loads(orjson.dumps(config_as_dict(config)))
    assert config_from_mapping(data) == config


def test_every_channel_can_be_configured() -> None:
    table = {c.value: "1h" for c in Channel}
    config = config_from_mapping({"rules": {"unreachable_help": {"long_wait": table}}})
    assert all(config.unreachable_help.long_wait_ms(c.value) == HOUR for c in Channel)
