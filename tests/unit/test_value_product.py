"""The keys a chunked block's product with the values sums over (``at_probe.models.value_product``)."""

from __future__ import annotations

import pytest
import torch

from at_probe.models.value_product import PRODUCT_KEYS, product_span, sums_in_key_order


@pytest.mark.parametrize("keys,total,unit,span", [
    (1, 4133, 512, 512), (512, 4133, 512, 512), (513, 4133, 512, 1024), (4000, 4133, 512, 4096),
    (4100, 4133, 512, 4133),
    (300, 400, 512, 400), (4133, 4133, 512, 4133), (7, 4133, None, 4133), (100, 130, 1, 100),
])
def test_the_span_is_the_keys_rounded_up_within_the_pass(keys, total, unit, span):
    assert product_span(keys, total, unit) == span


def _short_equals_full(total: int, rows: int, head_dim: int, seed: int) -> bool:
    """The check's question, asked directly at another length, rows and data."""
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(3, total, head_dim, generator=generator)
    for start in range(0, total, rows):
        end = min(total, start + rows)
        weights = torch.rand(3, end - start, total, generator=generator).tril(start)
        span = product_span(end, total, PRODUCT_KEYS)
        if not torch.equal(weights[..., :span] @ values[:, :span], weights @ values):
            return False
    return True


@pytest.mark.parametrize("total,rows", [(1500, 64), (2100, 128), (3000, 512)])
def test_the_check_agrees_with_products_at_other_lengths(total, rows):
    """Whatever this machine's kernels do, the once-per-process check must give the answer that
    products of other lengths, rows and data give; on MKL CPUs both say the short product is exact."""
    assert sums_in_key_order("cpu", torch.float32, rows, 64) == _short_equals_full(total, rows, 64, seed=7)


def test_the_check_is_made_once_per_device_dtype_rows_and_width():
    sums_in_key_order.cache_clear()
    sums_in_key_order("cpu", torch.float32, 64, 16)
    sums_in_key_order("cpu", torch.float32, 64, 16)
    assert sums_in_key_order.cache_info().misses == 1
