"""The dedup window's decision as plain calls."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from projections.ingest import DedupWindow

HOUR = 3600.0
T0 = 1_700_000_000.0


def test_an_id_seen_within_the_window_is_a_repeat() -> None:
    w = DedupWindow(HOUR)
    assert not w.is_repeat(None, T0)
    assert w.is_repeat(T0, T0)
    assert w.is_repeat(T0, T0 + HOUR - 0.001)
    assert not w.is_repeat(T0, T0 + HOUR)


@given(first=st.floats(0, 1e9), age=st.floats(0, 1e6), hours=st.floats(0.01, 500))
def test_repeat_and_expired_are_exact_opposites(first: float, age: float, hours: float) -> None:
    w = DedupWindow(hours * HOUR)
    assert w.is_repeat(first, first + age) != w.expired(first, first + age)
