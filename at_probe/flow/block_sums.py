"""FlowProbe's per-row sums over a block of attention weights.

For each query row of a block ``p`` ``[head, rows, keys]`` (row ``r`` at position
``first + r``) the probe needs three sums over the keys the row can see: its mass on each key
region, its position-weighted mass (for the mean attention distance) and ``sum p log p`` (for
the entropy). Each is a pass over the block, and at the model's whole context these passes are
most of the probe's cost (issue #22's budget: at most 1.15x a chunked forward).

On the CPU the sums come from one compiled pass (``block_sums.cpp``, built on first use with
``torch.utils.cpp_extension`` and glibc's vector ``logf``; about 40 s once, then cached under
``~/.cache/torch_extensions``): on 8,192-token SmolLM2-shaped blocks it took 6.3 ms where the
separate tensor passes took 16.4 (one thread). Where it cannot build (no C++ compiler, no
libmvec), on other devices, or with ``AT_PROBE_KERNEL=0`` in the environment, the same sums
come from torch and NumPy operations (``torch_block_sums``); the two agree to float32 rounding
(``tests/unit/test_block_sums.py``).

Conventions (both paths): a row's weights after its own position must be zero, as in a causal
pattern (the compiled pass does not read them, the torch path reads some); in ``p log p`` zeros
and rounding negatives (the transition's residue, ~1e-9) count as 0, and so does a NaN, which
still reaches the row's mass.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

KERNEL_ENV = "AT_PROBE_KERNEL"
"""Environment variable: ``0`` makes the probe use torch operations instead of the compiled pass."""

_SOURCE = Path(__file__).with_name("block_sums.cpp")
_HEADER = _SOURCE.with_name("block_sums_region.h")  # the hot loop, included by the source
CFLAGS = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-fopenmp-simd"]
"""The compiler flags of every build: without ``-fno-math-errno`` and ``-fno-trapping-math`` the
loop calls the scalar ``logf`` (``block_sums_region.h``)."""
ARCH_FLAGS = {"AVX512": ["-mavx512f", "-mavx512dq", "-mavx2", "-mfma", "-mprefer-vector-width=512"],
              "AVX2": ["-mavx2", "-mfma"]}
"""Extra flags by torch's CPU capability (``torch.backends.cpu.get_cpu_capability()``)."""
# the build is named by torch's CPU capability and the sources' hash, so a cache shared by
# different machines or checkouts never hands one a library built for others
_SUB_ROWS = 64  # torch path: rows per sub-block, each reading keys only up to its last row
_NUMPY_LOG_THREADS = 3
"""Up to this many torch threads the torch path takes its logarithm through NumPy (``_log``)."""


@functools.cache
def kernel() -> Any | None:
    """The compiled ``block_sums`` extension, built on first call, or None where it is switched
    off (``AT_PROBE_KERNEL=0``, read once per process) or does not build (a warning says why,
    once per process)."""
    if os.environ.get(KERNEL_ENV, "1") == "0":
        return None
    capability = torch.backends.cpu.get_cpu_capability()
    digest = hashlib.sha256(_SOURCE.read_bytes() + _HEADER.read_bytes()).hexdigest()[:10]
    if shutil.which("ninja") is None:  # torch looks on PATH; the ninja package installs beside this Python
        os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    try:
        from torch.utils.cpp_extension import load

        return load(name=f"at_probe_block_sums_{capability.lower()}_{digest}", sources=[str(_SOURCE)],
                    extra_cflags=[*CFLAGS, *ARCH_FLAGS.get(capability, [])],
                    extra_ldflags=["-lmvec"], verbose=False)
    except Exception as err:  # any build failure: the torch path gives the same sums
        lines = str(err).strip().splitlines() or [""]
        reason = next((line for line in lines if "error:" in line), lines[-1]).strip()  # a compiler's first error
        warnings.warn(f"at_probe: the probe's compiled block sums did not build ({type(err).__name__}: "
                      f"{reason}); using torch "
                      f"operations (same sums, slower; set {KERNEL_ENV}=0 to skip the attempt)", stacklevel=2)
        return None


class BlockSums:
    """Computes the per-row sums of blocks (module docstring), holding the torch path's scratch
    buffer between blocks."""

    def __init__(self) -> None:
        self._scratch: Tensor | None = None

    def __call__(self, p: Tensor, edges: list[int], first: int) -> tuple[Tensor, Tensor, Tensor]:
        """Sums of ``p`` ``[head, rows, keys]``, row ``r`` at position ``first + r``, over key
        regions ``[edges[j], edges[j + 1])``.

        Raises:
            ValueError: the regions do not cover the keys (``edges[0] != 0`` or
                ``edges[-1] < keys``).

        Returns:
            ``[head, rows, region]`` mass, ``[head, rows]`` position-weighted mass (keys
            weighted by their position) and ``[head, rows]`` ``sum p log p`` (nats), on
            ``p``'s device: float64 from the compiled pass (float32 sums within each region,
            added up in float64), else float32.
        """
        if edges[0] != 0 or edges[-1] < p.shape[-1]:
            raise ValueError(f"block sums: the key regions {edges[0]}..{edges[-1]} must cover the block's "
                             f"{p.shape[-1]} keys")
        compiled = kernel() if p.device.type == "cpu" else None
        if compiled is not None:
            bounds = torch.tensor(edges, dtype=torch.int64)
            if p.dtype == torch.float32 and p.stride(-1) == 1:
                return tuple(compiled.block_sums(p, bounds, int(first)))
            # a float32 copy of a sub-block at a time, not of the whole block
            parts = [compiled.block_sums(q.float().contiguous(), bounds, int(first) + r0)
                     for r0, q in _sub_blocks(p, first)]
            return tuple(torch.cat(part, dim=1) for part in zip(*parts))
        return self.torch_block_sums(p, edges, first)

    def torch_block_sums(self, p: Tensor, edges: list[int], first: int) -> tuple[Tensor, Tensor, Tensor]:
        """``__call__``'s sums from torch (and NumPy) operations: in sub-blocks of 64 rows, each
        reading the keys up to its last row, a few batched passes per sub-block."""
        positions = torch.arange(p.shape[-1], device=p.device, dtype=torch.float32)
        parts = []
        for _, q in _sub_blocks(p, first):
            q = q.float()
            # slices and per-head products read q where it lies; a product with a one-hot
            # [keys, region] matrix gave the same sums six times slower (4k tokens, one thread)
            mass = torch.stack([q[..., a:b].sum(-1) for a, b in zip(edges[:-1], edges[1:])], dim=-1)
            weighted = torch.stack([torch.mv(head, positions[: q.shape[-1]]) for head in q])
            parts.append((mass, weighted, self._plogp(q)))
        return tuple(torch.cat(part, dim=1) for part in zip(*parts))

    def _plogp(self, q: Tensor) -> Tensor:
        """``sum p log p`` per row of ``q``, in one scratch buffer reused by every sub-block (a
        fresh one per step costs more, in page faults, than the arithmetic): NaN terms (zeros,
        ``0 * -inf``; negatives, the log of a negative; a NaN) are left out, as the kernel's are."""
        n = q.numel()
        if self._scratch is None or self._scratch.numel() < n or self._scratch.device != q.device:
            grown = 2 * self._scratch.numel() if self._scratch is not None else 0  # a causal block's keys grow
            self._scratch = torch.empty(max(n, grown), device=q.device)
        logs = self._scratch[:n].view(q.shape)
        _log(q, out=logs)
        return logs.mul_(q).nansum(-1)


def _sub_blocks(p: Tensor, first: int) -> Iterator[tuple[int, Tensor]]:
    """``(r0, view)`` for each ``_SUB_ROWS`` rows of ``p`` ``[head, rows, keys]`` from row
    ``r0``, the view holding the keys up to the sub-block's last row (a causal pattern's other
    keys are zero)."""
    for r0 in range(0, p.shape[1], _SUB_ROWS):
        keys = min(p.shape[2], first + min(r0 + _SUB_ROWS, p.shape[1]))
        yield r0, p[:, r0 : r0 + _SUB_ROWS, :keys]


def _log(x: Tensor, *, out: Tensor) -> None:
    """``out = log(x)`` for float32 ``x`` (any strides) and a contiguous float32 ``out`` of its
    shape, without warnings (``-inf`` at zeros, NaN below zero and at NaN). On the CPU with at
    most ``_NUMPY_LOG_THREADS`` torch threads, through NumPy (the two share memory): its SIMD
    ``log`` took 0.54 ns a value against torch's 1.97 on one thread in one measurement (AVX-512,
    torch 2.13; the two were even in another session). Values agree within a few float32 ulp."""
    if x.device.type == "cpu" and out.is_contiguous() and torch.get_num_threads() <= _NUMPY_LOG_THREADS:
        with np.errstate(divide="ignore", invalid="ignore"):
            np.log(x.numpy(), out=out.numpy())
    else:
        torch.log(x, out=out)
