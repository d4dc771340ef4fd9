"""What every analyst question shares: its error, the time range, bounds on its options."""

from __future__ import annotations

from datetime import UTC, datetime


class SpecError(ValueError):
    """A question that cannot be asked as given; the message is one line naming the part."""


def utc(moment: datetime) -> datetime:
    """A naive time is UTC, as the warehouse stores occurred_at."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def parse_moment(text: str) -> datetime:
    """An ISO 8601 date or time (`2024-05-01`, `2024-05-01T09:00:00Z`); UTC without an
    offset. Raises ValueError (the callers word it for their option)."""
    return utc(datetime.fromisoformat(text.strip().replace("Z", "+00:00")))


def before(since: datetime | None, until: datetime | None) -> bool:
    """Whether the range is open or since comes before until."""
    return since is None or until is None or utc(since) < utc(until)


def require_between(name: str, value: int, low: int, high: int | None = None) -> None:
    """SpecError unless low <= value (<= high)."""
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise SpecError(f"{name} must be {bound}, got {value}")


def require_type(name: str, value: str) -> None:
    """SpecError when a touchpoint-type option is empty."""
    if not value:
        raise SpecError(f"{name} needs a touchpoint type")
