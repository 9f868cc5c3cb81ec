"""Corpora at a researcher's scale: integer evaluation indices, the token cache, batches from its memory map."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.data.prepare import spread

# Past 2**24 windows float32 cannot tell n - 1 from n: this count made torch.linspace(0, n - 1, k) index past the end.
CRASHING_WINDOWS = 98_999_936


def test_the_float_index_that_crashed_is_out_of_bounds():
    """The bug itself, so the test below is known to test something."""
    assert int(torch.linspace(0, CRASHING_WINDOWS - 1, 320).round().long().max()) == CRASHING_WINDOWS


@pytest.mark.parametrize("n", [CRASHING_WINDOWS, 2**24 + 1, 2**31 + 7, 10**11 + 3])
@pytest.mark.parametrize("k", [1, 2, 320, 10_000])
def test_spread_stays_in_bounds_and_hits_both_ends_past_2_24(n, k):
    idx = spread(n, k)
    assert idx.dtype == np.int64 and len(idx) == k
    assert int(idx[0]) == 0 and int(idx.max()) <= n - 1
    if k > 1:
        assert int(idx[-1]) == n - 1
        assert (np.diff(idx) > 0).all()  # strictly increasing: no window twice
        gaps = np.diff(idx)
        assert int(gaps.max()) - int(gaps.min()) <= 1  # evenly spread


def test_spread_small_is_what_linspace_gave():
    """Below 2**24 the evaluation windows of every earlier run stay the same (no float error there for these)."""
    for n, k in [(962, 320), (117, 320), (10, 4), (4647, 640), (1136, 256)]:
        old = torch.linspace(0, n - 1, min(n, k)).round().long().numpy()
        assert np.array_equal(spread(n, k), old)
    assert spread(5, 100).tolist() == [0, 1, 2, 3, 4]
    assert len(spread(0, 3)) == 0
