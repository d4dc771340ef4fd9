"""Paths, touchpoint flows and the stage map as questions, and flows as Sankey data."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from projections.analysis.spec import SpecError, require_between, require_type

DEFAULT_CONVERSION = "purchase"
# Longer paths rarely repeat across people, and every extra step multiplies the groups.
MAX_PATH_LENGTH = 50


@dataclass(frozen=True, slots=True)
class PathsSpec:
    """The most common sequences of touchpoint types per person: from the first
    `start_at`, up to the first `end_at`, or from the journey's start."""

    start_at: str | None = None
    end_at: str | None = None
    top: int = 20
    max_length: int = 6
    collapse_repeats: bool = True
    exclude: Sequence[str] = ()
    since: datetime | None = None
    until: datetime | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "exclude", tuple(self.exclude))
        if self.start_at is not None and self.end_at is not None:
            raise SpecError("a path either starts at a type or ends at one, not both")
        for name, anchor in (("start_at", self.start_at), ("end_at", self.end_at)):
            if anchor is not None:
                require_type(name, anchor)
                if anchor in self.exclude:
                    raise SpecError(f"{anchor!r} is excluded, so no path can reach it")
        require_between("top", self.top, 1)
        require_between("max_length", self.max_length, 1, MAX_PATH_LENGTH)


@dataclass(frozen=True, slots=True)
class FlowsSpec:
    """Touchpoint-to-touchpoint flows, split by people whose journey holds `conversion`;
    `top` keeps the largest flows only (None: all)."""

    conversion: str = DEFAULT_CONVERSION
    top: int | None = None
    collapse_repeats: bool = True
    exclude: Sequence[str] = ()
    since: datetime | None = None
    until: datetime | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "exclude", tuple(self.exclude))
        require_type("conversion", self.conversion)
        if self.top is not None:
            require_between("top", self.top, 1)


@dataclass(frozen=True, slots=True)
class StageMapSpec:
    """Stage-to-stage flows of the journey map, split by customers who have bought."""

    since: datetime | None = None
    until: datetime | None = None


def sankey(flows: Sequence[Mapping[str, Any]], conversion: str) -> dict[str, Any]:
    """Flow records (source, target, transitions, people, converted_transitions,
    converted_people) as Sankey data: nodes by name, links by node name with counts.

    `value` is the transitions, `converted` the part of them made by converted people.
    """
    names: dict[str, None] = {}
    for flow in flows:
        names.setdefault(flow["source"])
        names.setdefault(flow["target"])
    return {
        "conversion": conversion,
        "nodes": [{"name": name} for name in names],
        "links": [
            {
                "source": f["source"],
                "target": f["target"],
                "value": f["transitions"],
                "people": f["people"],
                "converted": f["converted_transitions"],
                "converted_people": f["converted_people"],
            }
            for f in flows
        ],
    }
