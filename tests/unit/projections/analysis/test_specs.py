"""The paths, flows, retention and customer questions check their options themselves."""

from __future__ import annotations

import re

import pytest

from projections.analysis.paths import FlowsSpec, PathsSpec
from projections.analysis.retention import RetentionSpec
from projections.analysis.timeline import CustomerSpec


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: PathsSpec(start_at="a", end_at="b"), "not both"),
        (lambda: PathsSpec(start_at=""), "start_at needs a touchpoint type"),
        (lambda: PathsSpec(top=0), "top must be at least 1, got 0"),
        (lambda: PathsSpec(max_length=0), "max_length must be between 1 and 50"),
        (lambda: PathsSpec(max_length=51), "max_length must be between 1 and 50"),
        (lambda: PathsSpec(end_at="purchase", exclude=["purchase"]), "excluded"),
        (lambda: FlowsSpec(conversion=""), "conversion needs"),
        (lambda: FlowsSpec(top=0), "top must be at least 1"),
        (lambda: RetentionSpec(periods=-1), "periods must be between 0 and 120"),
        (lambda: RetentionSpec(periods=121), "periods must be between 0 and 120"),
        (lambda: RetentionSpec(cohort_event=""), "cohort_event needs"),
        (lambda: RetentionSpec(return_event=""), "return_event needs"),
        (lambda: CustomerSpec(""), "customer id or an anonymous id"),
        (lambda: CustomerSpec("c", limit=0), "limit must be at least 1"),
    ],
)
def test_specs_refuse_bad_arguments(call: object, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        call()  # type: ignore[operator]


def test_retention_refuses_an_unknown_period() -> None:
    with pytest.raises(ValueError):
        RetentionSpec(period="day")  # type: ignore[arg-type]
