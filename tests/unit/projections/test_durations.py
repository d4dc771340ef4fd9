"""The one duration grammar that the CLI, the HTTP API and the TOML files share."""

from __future__ import annotations

import pytest

from projections.durations import (
    DAY_MS,
    HOUR_MS,
    MAX_WINDOW_SECONDS,
    MINUTE_MS,
    DurationError,
    duration_ms,
    parse_window,
)


@pytest.mark.parametrize(("value", "expected"), [
    ("250ms", 250), ("90s", 90_000), ("10m", 10 * MINUTE_MS), ("1.5h", 90 * MINUTE_MS),
    ("3d", 3 * DAY_MS), ("2w", 14 * DAY_MS), (" 4 h ", 4 * HOUR_MS), ("45", 45_000),
    (90, 90_000), (0.25, 250), (0, 0)])
def test_one_spelling_one_length(value: object, expected: int) -> None:
    assert duration_ms(value) == expected


@pytest.mark.parametrize("value", ["14 days", "soon", "-5m", "1e3s", "", True, None, [], -1,
                                   float("nan")])
def test_what_is_no_duration(value: object) -> None:
    with pytest.raises(DurationError):
        duration_ms(value)


def test_a_window_is_the_same_grammar_in_whole_seconds() -> None:
    # the same text means the same length in a funnel window and in a rules file
    for text in ("30s", "15m", "1.5h", "14d", "2w", "45"):
        assert parse_window(text) * 1000 == duration_ms(text)
    with pytest.raises(DurationError, match=r"^window '1500ms': must be a whole number"):
        parse_window("1500ms")
    with pytest.raises(DurationError, match=r"^window '0s': must be between 1s and 3660d"):
        parse_window("0s")
    with pytest.raises(DurationError, match="between"):
        parse_window(f"{MAX_WINDOW_SECONDS + 1}s")
    with pytest.raises(DurationError, match=r"^deadline 'x': write a whole number and a unit"):
        parse_window("x", "deadline")
