"""Attribution patching's reduction: <dM/dA, dA> of every region's knockout from row sums."""

from __future__ import annotations

import torch

from at_probe.flow import ops
from at_probe.flow.attribution import knockout_inner_products


def test_inner_products_equal_the_direct_sum_over_the_knockout_change():
    """For each region, sum(G * (knockout(A) - A)) over heads, rows and keys, including rows that
    put almost all their mass on the region and keys past the last region (a reference)."""
    gen = torch.Generator().manual_seed(0)
    t, tail = 40, 6
    scores = torch.randn(3, t + tail, t + tail, generator=gen)
    scores[0, 30:, 20:25] += 30.0  # head 0: late rows nearly all on one region
    mask = torch.ones(t + tail, t + tail, dtype=torch.bool).tril()
    pattern = scores.masked_fill(~mask, float("-inf")).softmax(-1)
    grad = torch.randn(pattern.shape, generator=gen)
    edges = [0, 1, 10, 20, 25, 39]
    got = knockout_inner_products(pattern, grad, edges)
    expected = torch.stack([(grad * (ops.knockout(pattern, lo, hi) - pattern)).sum()
                            for lo, hi in zip(edges, edges[1:])])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
