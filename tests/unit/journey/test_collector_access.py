"""Write keys, the per-key rate limit, CORS origins and the loopback rule of the collector."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from journey.collector.access import (
    CorsPolicy,
    RateLimiter,
    WriteKeys,
    is_loopback,
    presented_key,
)
from journey.collector.run import check_binding
from journey.errors import ConfigurationError
from journey.settings import Settings


def basic(user: str, password: str = "") -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_keys_are_named_or_get_a_label_that_does_not_show_them() -> None:
    keys = WriteKeys.parse(["web=wk_123", "wk_456", " ", "# a comment"], "test")
    assert keys.name_of("wk_123") == "web"
    label = keys.name_of("wk_456")
    assert label is not None and label.startswith("key-") and "456" not in label
    assert keys.name_of("wk_789") is None and keys.name_of(None) is None


@pytest.mark.parametrize("entries", [["a=k", "b=k"], ["a=k1", "a=k2"], ["web=two words"],
                                     ["=k"], ["name="]])
def test_bad_key_lists_are_one_clear_error(entries: list[str]) -> None:
    with pytest.raises(ConfigurationError):
        WriteKeys.parse(entries, "test")


def test_keys_come_from_the_variable_and_the_file(tmp_path: Path) -> None:
    file = tmp_path / "keys"
    file.write_text("# keys of the shop\nserver=sk_1\n\nbrowser=bk_2\n")
    keys = WriteKeys.load("ops=ok_3", file)
    assert [keys.name_of(k) for k in ("sk_1", "bk_2", "ok_3")] == ["server", "browser", "ops"]
    with pytest.raises(ConfigurationError, match="both"):
        WriteKeys.load("server=sk_1", file)
    with pytest.raises(ConfigurationError, match="cannot read"):
        WriteKeys.load(None, tmp_path / "missing")
    assert not WriteKeys.load(None, None)


def test_bearer_and_basic_with_the_key_as_user_name() -> None:
    assert presented_key("Bearer wk_1") == "wk_1"
    assert presented_key("bearer  wk_1 ") == "wk_1"
    assert presented_key(basic("wk_1")) == "wk_1"
    assert presented_key(basic("wk_1", "ignored")) == "wk_1"
    for junk in (None, "", "Bearer", "Basic !!!", basic(""), "Token wk_1", "Basic " +
                 base64.b64encode(b"\xff:").decode()):
        assert presented_key(junk) is None


def test_loopback() -> None:
    assert all(map(is_loopback, ["127.0.0.1", "127.0.0.9", "::1", "[::1]", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "10.0.0.5", "collector.internal"]))


def test_without_keys_the_collector_serves_loopback_only() -> None:
    line = check_binding(Settings(collector_host="127.0.0.1"))
    assert "without authentication" in line and "\n" not in line
    with pytest.raises(ConfigurationError, match="JOURNEY_COLLECTOR_WRITE_KEYS"):
        check_binding(Settings(collector_host="0.0.0.0"))
    assert "1 write key" in check_binding(Settings(collector_host="0.0.0.0",
                                                   collector_write_keys="k"))


def test_rate_limit_lets_a_burst_through_then_says_when_to_retry() -> None:
    limiter = RateLimiter(rate=100, burst_seconds=2)  # 200 at once, then 100/s
    assert limiter.admit("k", 150, now=0.0) is None
    assert limiter.admit("k", 50, now=0.0) is None
    assert limiter.admit("k", 100, now=0.0) == 1  # 100 short at 100/s
    assert limiter.admit("k", 100, now=1.0) is None  # refilled 100
    assert limiter.admit("other", 200, now=1.0) is None  # per key


def test_rate_limit_retry_after_rounds_up_to_whole_seconds() -> None:
    limiter = RateLimiter(rate=10, burst_seconds=1)
    assert limiter.admit("k", 10, now=0.0) is None
    assert limiter.admit("k", 10, now=0.05) == 1
    assert limiter.admit("k", 10, now=0.5) == 1
    assert limiter.admit("k", 10, now=1.0) is None


def test_a_request_larger_than_the_burst_passes_on_a_full_bucket_and_leaves_debt() -> None:
    limiter = RateLimiter(rate=10, burst_seconds=1)
    assert limiter.admit("k", 35, now=0.0) is None
    assert limiter.admit("k", 1, now=2.0) == 1  # 25 in debt, 20 refilled: 6 short at 10/s
    assert limiter.admit("k", 1, now=2.5) == 1
    assert limiter.admit("k", 1, now=2.7) is None


def test_a_refund_gives_back_what_was_not_served() -> None:
    limiter = RateLimiter(rate=10, burst_seconds=1)
    assert limiter.admit("k", 10, now=0.0) is None
    limiter.refund("k", 10)
    assert limiter.admit("k", 10, now=0.0) is None


def test_rate_zero_is_no_limit() -> None:
    assert RateLimiter(rate=0, burst_seconds=1).admit("k", 10**9, now=0.0) is None


def test_cors_origins() -> None:
    policy = CorsPolicy.parse("https://shop.test, https://www.shop.test/")
    assert policy.allows("https://shop.test") and policy.allows("https://www.shop.test")
    assert not policy.allows("https://evil.test")
    assert CorsPolicy.parse("*").allows("https://anything.test")
    assert not CorsPolicy.parse("").allows("https://shop.test")
