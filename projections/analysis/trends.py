"""Touchpoint counts as a question: how many touchpoints and people of each type."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class TouchpointCountsSpec:
    """Touchpoints and distinct people per type in a time range."""

    since: datetime | None = None
    until: datetime | None = None
