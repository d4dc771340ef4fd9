"""The alert consumer's TOML config: sinks, their filters, throttles and retry budgets.

Parsed by hand rather than with pydantic so that every mistake becomes one line naming
the file, the table, the key and the fix (see docs/ALERTS.md for the format).
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, Final

from projections.errors import ConfigurationError
from schemas.friction import FrictionEvent, Severity

SEVERITY_ORDER: Final[dict[Severity, int]] = {
    Severity.LOW: 0,
    Severity.MEDIUM: 1,
    Severity.HIGH: 2,
    Severity.CRITICAL: 3,
}

DEFAULT_THROTTLE_SECONDS: Final = 300.0
DEFAULT_BATCH_SIZE: Final = 500
DEFAULT_MEMORY: Final = 100_000
DEFAULT_SUMMARY_SECONDS: Final = 60.0
# The consumer must poll again within max.poll.interval.ms; a batch lasts at most the
# longest sink budget plus one request, so budgets are kept well under that ceiling.
MAX_BUDGET_SECONDS: Final = 3600.0
# Held friction stays uncommitted (and in memory) until released: a day at most.
MAX_HOLD_SECONDS: Final = 86400.0
# Set by the consumer on every request; a config that overrides them would break
# receivers' deduplication or the body's meaning.
RESERVED_HEADERS: Final = frozenset({"idempotency-key", "content-type"})


def at_least(severity: Severity, minimum: Severity) -> bool:
    """low < medium < high < critical."""
    return SEVERITY_ORDER[severity] >= SEVERITY_ORDER[minimum]


class SinkType(StrEnum):
    CONSOLE = "console"
    FILE = "file"
    WEBHOOK = "webhook"


class WebhookFormat(StrEnum):
    JSON = "json"  # the friction event JSON as received
    SLACK = "slack"  # {"text": "..."} for Slack-compatible incoming webhooks


@dataclass(frozen=True, slots=True)
class RetryBudget:
    """How hard a sink tries before an alert goes to the alert dead-letter topic.

    `attempts` counts every try of one alert (1 = no retry). `max_seconds` bounds the
    sink's work on one batch: once spent, the alerts still undelivered are dead-lettered.
    """

    attempts: int = 5
    max_seconds: float = 30.0
    first_backoff_seconds: float = 0.5
    max_backoff_seconds: float = 10.0

    def backoff(self, attempt: int) -> float:
        """The wait after failed attempt number `attempt` (1-based), doubling each time."""
        return min(self.first_backoff_seconds * 2.0 ** (attempt - 1), self.max_backoff_seconds)


@dataclass(frozen=True, slots=True)
class AlertFilter:
    """Which friction a sink wants: some rules (None = all) at or above a severity."""

    rules: frozenset[str] | None = None
    min_severity: Severity = Severity.LOW

    def accepts(self, friction: FrictionEvent) -> bool:
        if self.rules is not None and friction.rule not in self.rules:
            return False
        return at_least(friction.severity, self.min_severity)


@dataclass(frozen=True, slots=True, kw_only=True)
class SinkConfig:
    name: str
    filter: AlertFilter = field(default_factory=AlertFilter)
    throttle_seconds: float = DEFAULT_THROTTLE_SECONDS
    retry: RetryBudget = field(default_factory=RetryBudget)
    # deliver a friction only once it has stood this long without a retraction (0 = off)
    hold_seconds: float = 0.0
    # deliver retractions of friction this sink may have delivered ("resolved")
    retractions: bool = False
    type: ClassVar[SinkType]  # each kind of sink names itself


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsoleSinkConfig(SinkConfig):
    type: ClassVar[SinkType] = SinkType.CONSOLE


@dataclass(frozen=True, slots=True, kw_only=True)
class FileSinkConfig(SinkConfig):
    path: Path
    type: ClassVar[SinkType] = SinkType.FILE


@dataclass(frozen=True, slots=True, kw_only=True)
class WebhookSinkConfig(SinkConfig):
    url: str
    format: WebhookFormat = WebhookFormat.JSON
    timeout_seconds: float = 10.0
    headers: tuple[tuple[str, str], ...] = ()
    concurrency: int = 8
    type: ClassVar[SinkType] = SinkType.WEBHOOK


@dataclass(frozen=True, slots=True)
class AlertsConfig:
    sinks: tuple[SinkConfig, ...]
    group: str | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    # friction ids and (customer_key, rule) throttle entries kept in memory, each
    memory: int = DEFAULT_MEMORY
    summary_seconds: float = DEFAULT_SUMMARY_SECONDS
    # friction detected more than this long after it happened is not delivered (0 = off)
    max_age_seconds: float = 0.0
    source: Path | None = None

    def longest_budget(self) -> float:
        """The longest a batch can take in the sinks (budget plus one last request)."""
        longest = 0.0
        for sink in self.sinks:
            timeout = sink.timeout_seconds if isinstance(sink, WebhookSinkConfig) else 0.0
            longest = max(longest, sink.retry.max_seconds + timeout)
        return longest


def default_config(*, throttle_seconds: float = DEFAULT_THROTTLE_SECONDS) -> AlertsConfig:
    """No config file: one console sink that shows every friction."""
    return AlertsConfig(sinks=(ConsoleSinkConfig(name="console",
                                                 throttle_seconds=throttle_seconds),))


# -- parsing -----------------------------------------------------------------------------

_ALERTS_KEYS = {
    "group": "consumer group (default '<app id>-alerts')",
    "batch_size": "friction events per batch",
    "throttle_seconds": "default throttle period of every sink (0 = off)",
    "memory": "friction ids and throttle keys kept in memory",
    "summary_seconds": "period of the summary line (0 = off)",
    "max_age_seconds": "skip friction detected longer than this after it happened (0 = off)",
}
_COMMON_SINK_KEYS = ("name", "type", "rules", "min_severity", "throttle_seconds", "retry",
                     "hold_seconds", "retractions")
_SINK_KEYS = {
    SinkType.CONSOLE: _COMMON_SINK_KEYS,
    SinkType.FILE: (*_COMMON_SINK_KEYS, "path"),
    SinkType.WEBHOOK: (*_COMMON_SINK_KEYS, "url", "format", "timeout_seconds", "headers",
                       "concurrency"),
}
_RETRY_KEYS = ("attempts", "max_seconds", "first_backoff_seconds", "max_backoff_seconds")


class _Where:
    """Names a place in the file for error messages."""

    def __init__(self, path: Path, table: str) -> None:
        self.path = path
        self.table = table

    def fail(self, message: str) -> ConfigurationError:
        return ConfigurationError(f"{self.path}: {self.table}: {message}")

    def check_keys(self, table: Mapping[str, Any], allowed: tuple[str, ...] | list[str]) -> None:
        for key in table:
            if key not in allowed:
                raise self.fail(f"unknown key {key!r}: allowed keys are "
                                f"{', '.join(allowed)}; fix its spelling or remove it")

    def number(self, table: Mapping[str, Any], key: str, default: float, *,
               minimum: float = 0.0, maximum: float = math.inf,
               above_minimum: bool = False) -> float:
        value = table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(
                value):
            raise self.fail(f"{key} must be a number, got {value!r}")
        low_ok = value > minimum if above_minimum else value >= minimum
        if not low_ok or value > maximum:
            bound = f"above {minimum:g}" if above_minimum else f"at least {minimum:g}"
            upper = f" and at most {maximum:g}" if maximum != math.inf else ""
            raise self.fail(f"{key} must be {bound}{upper}, got {value!r}")
        return float(value)

    def integer(self, table: Mapping[str, Any], key: str, default: int, *,
                minimum: int = 1) -> int:
        value = table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(f"{key} must be a whole number, got {value!r}")
        if value < minimum:
            raise self.fail(f"{key} must be at least {minimum}, got {value!r}")
        return value

    def flag(self, table: Mapping[str, Any], key: str, default: bool) -> bool:
        value = table.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(f"{key} must be true or false, not {value!r}")
        return value

    def text(self, table: Mapping[str, Any], key: str) -> str:
        value = table.get(key)
        if value is None:
            raise self.fail(f"{key} is required")
        if not isinstance(value, str) or not value.strip():
            raise self.fail(f"{key} must be a non-empty string, got {value!r}")
        return value


def load_config(path: Path) -> AlertsConfig:
    """Read and check a config file; every mistake raises one ConfigurationError line."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigurationError(f"{path}: no such config file: check the --config path")\
            from None
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot read the config file ({exc.strerror})")\
            from None
    try:
        document = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigurationError(f"{path}: not UTF-8 text: save the config as UTF-8")\
            from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{path}: not valid TOML ({exc})") from None
    return parse_config(document, path)


def parse_config(document: Mapping[str, Any], path: Path) -> AlertsConfig:
    """A parsed TOML document as an AlertsConfig; relative file paths are under path's dir."""
    top = _Where(path, "top level")
    top.check_keys(document, ["alerts", "sinks"])
    alerts = document.get("alerts", {})
    where = _Where(path, "[alerts]")
    if not isinstance(alerts, dict):
        raise where.fail("must be a table: write [alerts] followed by its keys")
    where.check_keys(alerts, list(_ALERTS_KEYS))
    group = alerts.get("group")
    if group is not None:
        group = where.text(alerts, "group")
    throttle = where.number(alerts, "throttle_seconds", DEFAULT_THROTTLE_SECONDS)
    sinks_raw = document.get("sinks")
    if sinks_raw is None:
        raise top.fail("no sinks: add at least one [[sinks]] table with a type "
                       "(console, file or webhook)")
    if not isinstance(sinks_raw, list) or not all(isinstance(s, dict) for s in sinks_raw):
        raise top.fail("sinks must be an array of tables: write each as [[sinks]]")
    if not sinks_raw:
        raise top.fail("no sinks: add at least one [[sinks]] table")
    sinks: list[SinkConfig] = []
    for index, table in enumerate(sinks_raw, start=1):
        sinks.append(_parse_sink(table, index, path, throttle))
    names = [s.name for s in sinks]
    for name in names:
        if names.count(name) > 1:
            raise top.fail(f"two sinks are named {name!r}: give each [[sinks]] its own name "
                           "(the name is on every dead letter)")
    return AlertsConfig(
        sinks=tuple(sinks),
        group=group,
        batch_size=where.integer(alerts, "batch_size", DEFAULT_BATCH_SIZE),
        memory=where.integer(alerts, "memory", DEFAULT_MEMORY),
        summary_seconds=where.number(alerts, "summary_seconds", DEFAULT_SUMMARY_SECONDS),
        max_age_seconds=where.number(alerts, "max_age_seconds", 0.0),
        source=path,
    )


def _parse_sink(table: Mapping[str, Any], index: int, path: Path,
                default_throttle: float) -> SinkConfig:
    label = f"[[sinks]] #{index}"
    if isinstance(table.get("name"), str):
        label += f" ({table['name']!r})"
    where = _Where(path, label)
    kind_raw = table.get("type")
    if kind_raw is None:
        raise where.fail("type is required: console, file or webhook")
    try:
        kind = SinkType(kind_raw)
    except ValueError:
        raise where.fail(f"unknown sink type {kind_raw!r}: use console, file or webhook")\
            from None
    where.check_keys(table, _SINK_KEYS[kind])
    name = where.text(table, "name") if "name" in table else (
        kind.value if index == 1 else f"{kind.value}-{index}")
    common: dict[str, Any] = {
        "name": name,
        "filter": _parse_filter(table, where),
        "throttle_seconds": where.number(table, "throttle_seconds", default_throttle),
        "retry": _parse_retry(table.get("retry", {}), _Where(path, f"{label} retry")),
        "hold_seconds": where.number(table, "hold_seconds", 0.0, maximum=MAX_HOLD_SECONDS),
        "retractions": where.flag(table, "retractions", False),
    }
    if kind is SinkType.CONSOLE:
        return ConsoleSinkConfig(**common)
    if kind is SinkType.FILE:
        file = Path(where.text(table, "path")).expanduser()
        if not file.is_absolute():
            file = path.parent / file
        return FileSinkConfig(path=file, **common)
    return _parse_webhook(table, where, common)


def _parse_filter(table: Mapping[str, Any], where: _Where) -> AlertFilter:
    rules_raw = table.get("rules")
    rules: frozenset[str] | None = None
    if rules_raw is not None:
        if not isinstance(rules_raw, list) or not all(
                isinstance(r, str) and r for r in rules_raw):
            raise where.fail(f"rules must be a list of rule names, e.g. "
                             f"[\"repeat_contact\", \"sla_breach\"], got {rules_raw!r}")
        if not rules_raw:
            raise where.fail("rules is empty, so the sink would get nothing: list rules or "
                             "remove the key to get every rule")
        rules = frozenset(rules_raw)
    severity_raw = table.get("min_severity", Severity.LOW.value)
    try:
        severity = Severity(severity_raw)
    except ValueError:
        raise where.fail(f"bad min_severity {severity_raw!r}: use low, medium, high or "
                         "critical") from None
    return AlertFilter(rules=rules, min_severity=severity)


def _parse_retry(table: Any, where: _Where) -> RetryBudget:
    if not isinstance(table, dict):
        raise where.fail("must be a table, e.g. retry = { attempts = 5, max_seconds = 30 }")
    where.check_keys(table, _RETRY_KEYS)
    default = RetryBudget()
    first = where.number(table, "first_backoff_seconds", default.first_backoff_seconds,
                         maximum=MAX_BUDGET_SECONDS)
    return RetryBudget(
        attempts=where.integer(table, "attempts", default.attempts),
        max_seconds=where.number(table, "max_seconds", default.max_seconds,
                                 maximum=MAX_BUDGET_SECONDS, above_minimum=True),
        first_backoff_seconds=first,
        max_backoff_seconds=where.number(table, "max_backoff_seconds",
                                         max(default.max_backoff_seconds, first),
                                         minimum=first, maximum=MAX_BUDGET_SECONDS),
    )


def _parse_webhook(table: Mapping[str, Any], where: _Where,
                   common: dict[str, Any]) -> WebhookSinkConfig:
    url = where.text(table, "url")
    if not url.startswith(("http://", "https://")):
        raise where.fail(f"url must start with http:// or https://, got {url!r}")
    format_raw = table.get("format", WebhookFormat.JSON.value)
    try:
        body = WebhookFormat(format_raw)
    except ValueError:
        raise where.fail(f"unknown format {format_raw!r}: use json (the friction event) or "
                         "slack ({\"text\": ...})") from None
    headers_raw = table.get("headers", {})
    if not isinstance(headers_raw, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers_raw.items()):
        raise where.fail("headers must be a table of strings, e.g. "
                         "headers = { Authorization = \"Bearer ...\" }")
    for header in headers_raw:
        if header.lower() in RESERVED_HEADERS:
            raise where.fail(f"header {header!r} is set by the consumer itself: remove it")
    return WebhookSinkConfig(
        url=url,
        format=body,
        timeout_seconds=where.number(table, "timeout_seconds", 10.0, above_minimum=True,
                                     maximum=MAX_BUDGET_SECONDS),
        headers=tuple(sorted(headers_raw.items())),
        concurrency=where.integer(table, "concurrency", 8),
        **common,
    )
