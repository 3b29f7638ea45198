"""How many keys a block's product with the values sums over, under chunked attention.

The stock forward multiplies each row's weights by the values of every key of the pass; a
causal row's weights past its own position are zero. A block of query rows ``[s, e)`` holds
weights for its first ``e`` keys only (``at_probe.models.chunked``), so the product could
stop there, at half the stock product's work over a long pass. Zero weights add nothing, so
the sums agree bit for bit whenever the matrix-multiply kernel adds the keys in the same
groups and order whatever their number. MKL's CPU kernels do, from 512 keys on (shorter
products take another kernel): checked on random data at 1k-8k tokens, blocks of 32-512 rows,
every block bit for bit. ``sums_in_key_order`` checks it on the device that runs; where it does
not hold, the product runs over every key, as the stock forward's does.
"""

from __future__ import annotations

from functools import lru_cache

import torch

PRODUCT_KEYS = 512
"""A block's product with the values sums over its keys rounded up to a multiple of this."""

_CHECK_KEYS = 4133  # the check's pass: over 8 x 512 keys and off every multiple of them


def product_span(keys: int, total: int, unit: int | None) -> int:
    """Keys the product with the values sums over for a block whose weights cover its first
    ``keys`` of the pass's ``total`` keys: ``keys`` rounded up to a multiple of ``unit``, at
    most ``total``; all ``total`` where ``unit`` is None (the stock product)."""
    return total if unit is None else min(total, -(-keys // unit) * unit)


@lru_cache
def sums_in_key_order(device: str, dtype: torch.dtype, rows: int, head_dim: int) -> bool:
    """Whether, on ``device`` in ``dtype``, products over ``product_span(e, T, PRODUCT_KEYS)``
    keys equal the products over all ``T`` keys bit for bit, for every causal block of ``rows``
    query rows of a pass of 4,133 keys with ``head_dim``-wide values (random data, seeded;
    once per process and arguments: about 0.2 s on a CPU core)."""
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(2, _CHECK_KEYS, head_dim, generator=generator).to(device, dtype)
    for start in range(0, _CHECK_KEYS, rows):
        end = min(_CHECK_KEYS, start + rows)
        weights = torch.rand(2, end - start, _CHECK_KEYS, generator=generator).tril(start).to(device, dtype)
        span = product_span(end, _CHECK_KEYS, PRODUCT_KEYS)
        if not torch.equal(weights[..., :span] @ values[:, :span], weights @ values):
            return False
    return True
