"""The alert config file: the documented example, defaults, and one clear line per mistake."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from journey.errors import ConfigurationError
from schemas.friction import Severity
from streams.alerts_config import (
    DEFAULT_THROTTLE_SECONDS,
    SEVERITY_ORDER,
    AlertFilter,
    ConsoleSinkConfig,
    FileSinkConfig,
    RetryBudget,
    SinkType,
    WebhookFormat,
    WebhookSinkConfig,
    at_least,
    default_config,
    load_config,
)

DOCS = Path(__file__).resolve().parents[3] / "docs" / "ALERTS.md"


def write(tmp_path: Path, text: str, name: str = "alerts.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def fails(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigurationError) as caught:
        load_config(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    return message


def test_the_documented_example_parses_as_described(tmp_path: Path) -> None:
    blocks = re.findall(r"```toml\n(.*?)```", DOCS.read_text(encoding="utf-8"), re.S)
    assert blocks, "docs/ALERTS.md has no TOML example"
    config = load_config(write(tmp_path, blocks[0]))
    assert config.group == "journey-alerts"
    assert config.batch_size == 500
    assert config.memory == 100000
    assert config.max_age_seconds == 86400
    assert [s.name for s in config.sinks] == ["console", "archive", "ops-hook", "slack"]
    console, archive, hook, slack = config.sinks
    assert isinstance(console, ConsoleSinkConfig)
    assert console.filter == AlertFilter(None, Severity.MEDIUM)
    assert console.throttle_seconds == 600  # inherited from [alerts]
    assert isinstance(archive, FileSinkConfig)
    assert archive.path == tmp_path / "alerts.jsonl"
    assert archive.throttle_seconds == 0
    assert archive.retry == RetryBudget(attempts=3, max_seconds=10.0)
    assert isinstance(hook, WebhookSinkConfig)
    assert hook.filter.rules == frozenset({"repeat_contact", "sla_breach", "escalation"})
    assert hook.filter.min_severity is Severity.HIGH
    assert hook.headers == (("Authorization", "Bearer change-me"),)
    assert hook.timeout_seconds == 5 and hook.concurrency == 8
    assert hook.retry == RetryBudget(6, 60.0, 0.5, 15.0)
    assert hook.format is WebhookFormat.JSON
    assert isinstance(slack, WebhookSinkConfig)
    assert slack.format is WebhookFormat.SLACK
    assert slack.throttle_seconds == 3600
    assert config.longest_budget() == 65.0  # ops-hook: 60 s budget + a 5 s request


def test_a_minimal_file_takes_the_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[[sinks]]\ntype = "console"\n'
                                         '[[sinks]]\ntype = "file"\npath = "/tmp/x.jsonl"\n'))
    first, second = config.sinks
    assert (first.name, first.type) == ("console", SinkType.CONSOLE)
    assert (second.name, second.type) == ("file-2", SinkType.FILE)
    assert first.throttle_seconds == DEFAULT_THROTTLE_SECONDS
    assert first.filter == AlertFilter()
    assert first.retry == RetryBudget()
    assert config.group is None


def test_no_config_is_one_console_sink() -> None:
    config = default_config()
    assert len(config.sinks) == 1
    assert config.sinks[0].type is SinkType.CONSOLE


def test_severity_order_is_low_medium_high_critical() -> None:
    ordered = sorted(Severity, key=SEVERITY_ORDER.__getitem__)
    assert ordered == [Severity.LOW, Severity.MEDIUM, Severity.HIGH, Severity.CRITICAL]
    assert at_least(Severity.CRITICAL, Severity.HIGH)
    assert at_least(Severity.MEDIUM, Severity.MEDIUM)
    assert not at_least(Severity.MEDIUM, Severity.HIGH)
    assert not at_least(Severity.LOW, Severity.MEDIUM)


def test_backoff_doubles_up_to_its_ceiling() -> None:
    budget = RetryBudget(attempts=10, max_seconds=60, first_backoff_seconds=0.5,
                         max_backoff_seconds=3)
    assert [budget.backoff(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[[sinks]]\ntype = "console"\nmin_severty = "high"\n',
         r"\[\[sinks\]\] #1: unknown key 'min_severty': allowed keys are .*min_severity"),
        ('[alerts]\nthrottle = 5\n[[sinks]]\ntype = "console"\n',
         r"\[alerts\]: unknown key 'throttle': allowed keys are .*throttle_seconds"),
        ('[[sinks]]\ntype = "webhook"\nurl = "http://x"\n[sinks.retry]\ntries = 3\n',
         r"retry: unknown key 'tries'"),
        ('[[sinks]]\ntype = "console"\npath = "x"\n', r"unknown key 'path'"),
        ('sink = 1\n', r"top level: unknown key 'sink'"),
        ('[[sinks]]\ntype = "pager"\n',
         r"unknown sink type 'pager': use console, file or webhook"),
        ('[[sinks]]\nname = "x"\n', r"\[\[sinks\]\] #1 \('x'\): type is required"),
        ('[[sinks]]\ntype = "console"\nmin_severity = "urgent"\n',
         r"bad min_severity 'urgent': use low, medium, high or critical"),
        ('[[sinks]]\ntype = "console"\nrules = "sla_breach"\n', r"rules must be a list"),
        ('[[sinks]]\ntype = "console"\nrules = []\n', r"rules is empty"),
        ('[[sinks]]\ntype = "console"\nthrottle_seconds = -1\n',
         r"throttle_seconds must be at least 0"),
        ('[[sinks]]\ntype = "console"\nthrottle_seconds = "10m"\n',
         r"throttle_seconds must be a number"),
        ('[[sinks]]\ntype = "console"\nhold_seconds = 100000\n',
         r"hold_seconds must be at least 0 and at most 86400"),
        ('[[sinks]]\ntype = "console"\nretractions = "yes"\n',
         r"retractions must be true or false"),
        ('[[sinks]]\ntype = "file"\n', r"path is required"),
        ('[[sinks]]\ntype = "webhook"\n', r"url is required"),
        ('[[sinks]]\ntype = "webhook"\nurl = "ftp://x"\n', r"url must start with http"),
        ('[[sinks]]\ntype = "webhook"\nurl = "http://x"\nformat = "teams"\n',
         r"unknown format 'teams'"),
        ('[[sinks]]\ntype = "webhook"\nurl = "http://x"\n'
         'headers = { Idempotency-Key = "1" }\n', r"set by the consumer itself"),
        ('[[sinks]]\ntype = "webhook"\nurl = "http://x"\nheaders = { X = 1 }\n',
         r"headers must be a table of strings"),
        ('[[sinks]]\ntype = "webhook"\nurl = "http://x"\nretry = { attempts = 0 }\n',
         r"attempts must be at least 1"),
        ('[[sinks]]\ntype = "webhook"\nurl = "http://x"\nretry = { max_seconds = 0 }\n',
         r"max_seconds must be above 0"),
        ('[[sinks]]\ntype = "webhook"\nurl = "http://x"\nretry = { max_seconds = 99999 }\n',
         r"max_seconds must be above 0 and at most 3600"),
        ('[[sinks]]\ntype = "webhook"\nurl = "http://x"\n'
         'retry = { first_backoff_seconds = 5, max_backoff_seconds = 1 }\n',
         r"max_backoff_seconds must be at least 5"),
        ('[[sinks]]\ntype = "webhook"\nurl = "http://x"\nconcurrency = 2.5\n',
         r"concurrency must be a whole number"),
        ('[[sinks]]\ntype = "console"\n[[sinks]]\ntype = "console"\nname = "console"\n',
         r"two sinks are named 'console'"),
        ('[alerts]\nbatch_size = 0\n[[sinks]]\ntype = "console"\n',
         r"batch_size must be at least 1"),
        ('[alerts]\n', r"no sinks: add at least one \[\[sinks\]\]"),
        ('sinks = []\n', r"no sinks"),
        ('sinks = [1]\n', r"sinks must be an array of tables"),
        ('alerts = 3\n[[sinks]]\ntype = "console"\n', r"\[alerts\]: must be a table"),
        ('[[sinks]\ntype = "console"\n', r"not valid TOML"),
    ],
)
def test_each_mistake_is_one_line_naming_the_file_key_and_fix(
    tmp_path: Path, text: str, expected: str
) -> None:
    assert re.search(expected, fails(tmp_path, text))


def test_a_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"no such config file: check the --config"):
        load_config(tmp_path / "nope.toml")


def test_a_file_that_is_not_utf8_says_so(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes('[[sinks]]\ntype = "console"\nname = "caf\xe9"\n'.encode("latin-1"))
    with pytest.raises(ConfigurationError, match="not UTF-8"):
        load_config(path)


def test_a_file_path_is_relative_to_the_config_folder(tmp_path: Path) -> None:
    folder = tmp_path / "conf"
    folder.mkdir()
    config = load_config(write(folder, '[[sinks]]\ntype = "file"\npath = "out/a.jsonl"\n'))
    sink = config.sinks[0]
    assert isinstance(sink, FileSinkConfig)
    assert sink.path == folder / "out" / "a.jsonl"


def test_the_example_is_valid_toml_in_every_block() -> None:
    # Every TOML block of the docs is a whole, valid file (none is a fragment).
    for block in re.findall(r"```toml\n(.*?)```", DOCS.read_text(encoding="utf-8"), re.S):
        tomllib.loads(block)


def test_hold_and_retractions_are_off_unless_set(tmp_path: Path) -> None:
    plain, held = load_config(write(tmp_path, (
        '[[sinks]]\ntype = "console"\n'
        '[[sinks]]\ntype = "console"\nname = "pager"\nhold_seconds = 900\n'
        'retractions = true\n'))).sinks
    assert (plain.hold_seconds, plain.retractions) == (0.0, False)
    assert (held.hold_seconds, held.retractions) == (900.0, True)
