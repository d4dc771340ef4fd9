"""The collector's cached partitioner puts every key where aiokafka's default one does."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from streams.kafka import CachedKeyPartitioner, DefaultPartitioner


@given(keys=st.lists(st.binary(max_size=40), max_size=50), partitions=st.integers(1, 12))
def test_same_partition_as_the_default(keys: list[bytes], partitions: int) -> None:
    cached, default = CachedKeyPartitioner(size=8), DefaultPartitioner()
    every = list(range(partitions))
    for key in keys + keys:  # the second round comes from the cache
        assert cached(key, every, every) == default(key, every, every)


def test_no_key_is_any_available_partition() -> None:
    assert CachedKeyPartitioner()(None, [0, 1, 2, 3], [2]) == 2
