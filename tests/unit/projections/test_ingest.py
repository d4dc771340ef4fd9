"""The dedup window as plain calls: repeats, expiry, and restoring from changelog records."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from projections.ingest import DedupWindow, Replayed, SeenIds, Sighting, SightingFormatError

HOUR = 3600.0
T0 = 1_700_000_000.0


def window(hours: float = 1.0) -> DedupWindow:
    return DedupWindow(hours * HOUR)


def test_an_id_is_new_once_then_a_repeat_within_the_window() -> None:
    w, seen = window(), SeenIds()
    assert w.remember(seen, "a", T0)
    assert not w.remember(seen, "a", T0 + 1)
    assert not w.remember(seen, "a", T0 + HOUR - 0.001)
    assert seen == {"a": T0}  # a repeat does not move the first sighting


def test_after_the_window_an_id_is_new_again_and_moves_to_the_young_end() -> None:
    w, seen = window(), SeenIds()
    w.remember(seen, "a", T0)
    w.remember(seen, "b", T0 + 10)
    assert w.remember(seen, "a", T0 + HOUR)  # exactly one window later: new
    assert list(seen) == ["b", "a"]
    assert seen["a"] == T0 + HOUR


def test_forget_expired_drops_exactly_the_ids_past_the_window() -> None:
    w, seen = window(), SeenIds()
    for i in range(5):
        w.remember(seen, f"id-{i}", T0 + i * 600)  # every 10 minutes
    gone = w.forget_expired(seen, T0 + HOUR + 1200)  # ids 0, 1 and 2 are an hour old
    assert gone == ["id-0", "id-1", "id-2"]
    assert list(seen) == ["id-3", "id-4"]
    assert w.forget_expired(seen, T0 + HOUR + 1200) == []


@given(st.lists(st.tuples(st.integers(0, 30), st.floats(0, 3 * HOUR)), max_size=60),
       st.floats(0, 6 * HOUR))
def test_forgetting_keeps_exactly_what_is_still_in_the_window(
    arrivals: list[tuple[int, float]], later: float
) -> None:
    # Ids arrive in time order (as they do in one partition); compare with a brute force.
    w, seen = window(), SeenIds()
    first: dict[str, float] = {}
    now = T0
    for n, step in arrivals:
        now += step
        event_id = f"id-{n}"
        expect_new = event_id not in first or now - first[event_id] >= HOUR
        assert w.remember(seen, event_id, now) is expect_new
        if expect_new:
            first[event_id] = now
    end = now + later
    gone = w.forget_expired(seen, end)
    assert set(gone) == {i for i, t in first.items() if end - t >= HOUR}
    assert seen == {i: t for i, t in first.items() if end - t < HOUR}


def test_sightings_round_trip_and_refuse_anything_else() -> None:
    s = Sighting(T0 + 0.25, 42)
    assert Sighting.decode(s.encode()) == s
    assert Sighting.decode(b"[1700000000, 0]") == Sighting(T0, 0)
    for bad in (b"", b"{}", b"[1.0]", b'["x", 1]', b"[1.0, -1]", b"[1.0, 2.5]",
                b"[true, 1]", b"[1.0, 1, 2]", b"\xff"):
        with pytest.raises(SightingFormatError):
            Sighting.decode(bad)


def replay_all(records: list[tuple[str, Sighting | None]], now: float,
               resume: int, hours: float = 1.0) -> tuple[SeenIds, list[Replayed]]:
    w, seen = window(hours), SeenIds()
    outcomes = [w.replay(seen, event_id, s, now, resume) for event_id, s in records]
    return seen, outcomes


def test_replay_keeps_what_is_committed_and_inside_the_window() -> None:
    now = T0 + HOUR
    seen, outcomes = replay_all([
        ("old", Sighting(T0 - 1, 0)),  # past the window
        ("a", Sighting(T0 + 10, 1)),
        ("b", Sighting(T0 + 20, 2)),
        ("gone", Sighting(T0 + 30, 3)),
        ("gone", None),  # forgotten: a tombstone
        ("late", Sighting(T0 + 40, 9)),  # written for a batch never committed
    ], now, resume=5)
    assert seen == {"a": T0 + 10, "b": T0 + 20}
    assert outcomes == ["expired", "kept", "kept", "kept", "forgotten", "uncommitted"]


def test_replay_of_a_renewed_id_keeps_its_latest_sighting_at_the_young_end() -> None:
    now = T0 + 2 * HOUR
    seen, _ = replay_all([
        ("a", Sighting(T0, 0)),
        ("b", Sighting(T0 + 1.5 * HOUR, 7)),
        ("a", Sighting(T0 + 1.6 * HOUR, 8)),  # seen again after its first window
    ], now, resume=100)
    assert list(seen.items()) == [("b", T0 + 1.5 * HOUR), ("a", T0 + 1.6 * HOUR)]


def test_a_restored_window_decides_like_the_one_that_wrote_the_changelog() -> None:
    # The writer: ids arrive at offsets 0..n-1; what it wrote is its changelog.
    w, live = window(), SeenIds()
    changelog: list[tuple[str, Sighting | None]] = []
    arrivals = ["a", "b", "a", "c", "b", "d"]
    for offset, event_id in enumerate(arrivals):
        now = T0 + offset * 60
        if w.remember(live, event_id, now):
            changelog.append((event_id, Sighting(now, offset)))
    # Committed up to offset 4: the restored window is the one after offsets 0..3, and
    # routing offsets 4 and 5 again ("b" a repeat, "d" new) gives the same answers.
    restored, _ = replay_all(changelog, T0 + 600, resume=4)
    assert restored == {"a": T0, "b": T0 + 60, "c": T0 + 180}
    assert not w.remember(restored, "b", T0 + 600)
    assert w.remember(restored, "d", T0 + 600)
