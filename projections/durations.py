"""The one duration grammar: "250ms", "90s", "10m", "1.5h", "3d", "2w", or plain seconds.

The CLI (--window, --sla), the HTTP API (window=...) and the TOML files (friction rules)
all read durations here, so one spelling means one length everywhere. Each caller
checks the range it allows and words the error for where the text came from.
"""

from __future__ import annotations

import math
import re
from typing import Final

MINUTE_MS: Final = 60_000
HOUR_MS: Final = 60 * MINUTE_MS
DAY_MS: Final = 24 * HOUR_MS
WEEK_MS: Final = 7 * DAY_MS
UNIT_MS: Final = {"ms": 1, "s": 1000, "m": MINUTE_MS, "h": HOUR_MS, "d": DAY_MS, "w": WEEK_MS}
_GRAMMAR = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")


class DurationError(ValueError):
    """Not a duration; `negative` tells a number below zero from a spelling that is none."""

    def __init__(self, message: str, *, negative: bool = False) -> None:
        super().__init__(message)
        self.negative = negative


def duration_ms(value: object) -> int:
    """Milliseconds of a duration: a text in the grammar above (no unit: seconds), or a
    number of seconds (TOML numbers). Raises DurationError."""
    if isinstance(value, bool):
        raise DurationError(f"{value!r} is not a duration")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise DurationError(f"{value!r} is not a finite number of seconds >= 0", negative=True)
        return int(value * 1000)
    if isinstance(value, str):
        found = _GRAMMAR.match(value)
        if found:
            return int(float(found.group(1)) * UNIT_MS[found.group(2) or "s"])
    raise DurationError(f"{value!r} is not a duration")


def duration_seconds(value: object) -> float:
    """Seconds of a duration (see duration_ms)."""
    return duration_ms(value) / 1000


def format_duration(ms: int) -> str:
    """The shortest exact spelling of a duration: 600000 -> "10m"."""
    for unit in ("w", "d", "h", "m", "s"):
        if ms and ms % UNIT_MS[unit] == 0:
            return f"{ms // UNIT_MS[unit]}{unit}"
    return f"{ms}ms"


# The longest window a query option takes: keeps `ts + window` far from Int64 overflow
# in milliseconds and catches a typo of units.
MAX_WINDOW_SECONDS: Final = 10 * 366 * 86400


def parse_window(text: str, what: str = "window") -> int:
    """Whole seconds of a query option's duration (a funnel window, an SLA deadline),
    between 1s and MAX_WINDOW_SECONDS; DurationError names `what` and the text."""
    try:
        ms = duration_ms(text)
    except DurationError:
        raise DurationError(
            f"{what} {text!r}: write a whole number and a unit (s, m, h, d, w), such as 14d"
        ) from None
    if ms % 1000:
        raise DurationError(f"{what} {text!r}: must be a whole number of seconds")
    if not 0 < ms // 1000 <= MAX_WINDOW_SECONDS:
        raise DurationError(
            f"{what} {text!r}: must be between 1s and {MAX_WINDOW_SECONDS // 86400}d"
        )
    return ms // 1000
