"""Named random streams: the values every README number was measured with, and disjointness."""

import pytest

from classic import seeding


def test_streams_keep_the_measured_offsets():
    assert seeding.stream_seed("eval_tasks", 0) == 1_000_003
    assert seeding.stream_seed("eval_play", 2) == 1_000_003 + 7919 * 3
    assert seeding.stream_seed("tune", 4) == 30_004
    assert seeding.stream_seed("meta_prover", 1) == 10_007 * 2 and seeding.stream_seed("prefix", 0) == 20_011


def test_streams_do_not_collide_for_small_seeds():
    seen = {}
    for name in (n for n in seeding.STREAMS if n not in seeding.SAMPLER_STREAMS):
        for seed in range(100):
            value = seeding.stream_seed(name, seed)
            assert value not in seen or seen[value] == name, (name, seed, seen.get(value))
            seen[value] = name


def test_unknown_stream_lists_the_known_ones():
    with pytest.raises(KeyError, match="unknown random stream 'evl'.*eval_tasks"):
        seeding.generator("evl", 0)
