"""Attribution patching's reduction: <dM/dA, dA> of every region's knockout from row sums."""

from __future__ import annotations

import pytest
import torch

from at_probe.flow import ops
from at_probe.flow.attribution import knockout_inner_products, span_knockout_inner_products


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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_span_inner_products_equal_the_direct_sum_per_head_in_blocks_of_rows(dtype):
    """Knocking out several spans at once (each for the rows after it, rows rescaled to their
    sums): per head, sum(G * (knockout(A) - A)) over rows and keys, whole and in blocks of query
    rows with causal keys, where a block's keys may stop before a span (those keys are left
    out); the pattern is not changed; repeated keys are refused."""
    gen = torch.Generator().manual_seed(1)
    t = 48
    scores = torch.randn(3, t, t, generator=gen)
    scores[1, 30:, 8:12] += 30.0  # head 1: late rows nearly all on the first span
    whole = scores.masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(), float("-inf")).softmax(-1).to(dtype)
    pattern = whole.float()  # the values the function reads
    grad = torch.randn(pattern.shape, generator=gen)
    spans = [(8, 12), (20, 23), (40, 44)]
    keys = torch.tensor([k for a, b in spans for k in range(a, b)])
    ends = torch.tensor([b for a, b in spans for _ in range(a, b)])
    knocked = pattern.clone()
    for a, b in spans:
        knocked = ops.knockout(knocked, a, b)
    expected = (grad * (knocked - pattern)).sum(dim=(1, 2))
    before = whole.clone()
    torch.testing.assert_close(span_knockout_inner_products(whole, grad, keys, ends), expected, atol=1e-5, rtol=1e-4)
    assert torch.equal(whole, before)
    if dtype == torch.float32:  # a float32 pattern is read where it lies (its copy is the function's own)
        blocks = sum(span_knockout_inner_products(pattern[:, r : r + 16, : r + 16], grad[:, r : r + 16, : r + 16],
                                                  keys, ends, first_row=r) for r in range(0, t, 16))
        torch.testing.assert_close(blocks, expected, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="distinct"):
        span_knockout_inner_products(pattern, grad, torch.tensor([9, 9]), torch.tensor([12, 12]))
