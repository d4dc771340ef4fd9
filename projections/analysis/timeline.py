"""One person's timeline as a question: who an id is, and what happened to them."""

from __future__ import annotations

from dataclasses import dataclass

from projections.analysis.spec import SpecError, require_between

DEFAULT_TIMELINE_LIMIT = 200
# What an entry of a timeline is: a touchpoint, a stage change or a friction.
TOUCHPOINT_ENTRY = "touchpoint"
STAGE_CHANGE_ENTRY = "stage_change"
FRICTION_ENTRY = "friction"


@dataclass(frozen=True, slots=True)
class CustomerSpec:
    """A customer id or an anonymous id, and how many of the latest entries to show."""

    customer: str
    limit: int = DEFAULT_TIMELINE_LIMIT

    def __post_init__(self) -> None:
        if not self.customer:
            raise SpecError("give a customer id or an anonymous id")
        require_between("limit", self.limit, 1)
