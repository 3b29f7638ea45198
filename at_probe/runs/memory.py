"""Giving freed memory back to the operating system between large passes (CPU runs).

A CPU forward pass of a few thousand tokens allocates and frees many ``[head, T, T]`` patterns
of a few to a few tens of MB. glibc's allocator keeps such freed chunks in its heaps (one per
thread) rather than returning them, so a process that runs several conditions in a row
(``flow.py --transition both --rollout``) holds the freed memory of every earlier condition
next to the current one's: measured on SmolLM2 with a 787-token prompt, the live tensors
besides the weights were about 1 MB while the resident size stayed about 230 MB above the
weights after each condition. ``release_freed_memory`` asks glibc to return it
(``malloc_trim``); elsewhere (macOS, musl, Windows) it does nothing.

The opposite fault hits chunked attention over long passes: glibc serves every allocation
above its mmap threshold (at most 32 MiB however it adapts) with fresh pages from the OS,
which the kernel zeroes on first touch and takes back when the tensor is freed. A block's
scores and weights at 8,192 tokens (SmolLM2, 128 query rows: 38 MB each) cross it, so each of
the few tensors every block allocates was mapped anew: 13.3 million page faults in one forward
and 146 s against 104 s with the threshold raised (ad hoc, one thread; issue #22's time
budget). ``heap_allocations_up_to`` raises it for such tensors.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import os


@functools.cache
def _libc(function: str):  # type: ignore[no-untyped-def]
    """The C library's ``function``, or None (no C library found, or not glibc's function)."""
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), function, None) if name else None
    except OSError:
        return None


def _malloc_trim():  # type: ignore[no-untyped-def]
    return _libc("malloc_trim")


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameters (malloc.h)
_MAX_THRESHOLD = 2**30 - 1
_ADAPTIVE_CAP = 32 * 2**20  # glibc's own threshold adapts up to this (64-bit): left to it below
_heap_limit = 0  # the largest threshold set in this process


def _mallopt():  # type: ignore[no-untyped-def]
    return _libc("mallopt")


def heap_allocations_up_to(nbytes: int) -> bool:
    """Have glibc serve allocations of up to ``nbytes`` bytes from its heap, reusing freed
    memory, rather than mapping (and zeroing) fresh pages for each (module docstring).

    Raises the mmap threshold to ``nbytes`` and the trim threshold to twice that, as glibc's
    own adaptive threshold would do but for its 32 MiB cap; the freed memory then stays with
    the process until ``release_freed_memory``, for the rest of the process. Sizes up to 32 MiB
    are left to glibc's adaptive threshold (setting one would switch it off). Does nothing
    where the user set them (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_`` or
    ``GLIBC_TUNABLES``) or without glibc.

    Returns:
        True when the thresholds now cover ``nbytes``, or it is within the adaptive range
        (never above 1 GiB: mallopt takes a C int, and mapping fresh pages costs little beside
        the work on a tensor that large). False also where glibc refuses the value: its manual
        gives 32 MiB as the upper limit on 64-bit systems, which glibc 2.36 does not enforce.
    """
    global _heap_limit
    if nbytes <= max(_heap_limit, _ADAPTIVE_CAP):  # set already, or within glibc's own adaptation
        return True
    if nbytes > _MAX_THRESHOLD:
        return False
    chosen = any(os.environ.get(v) for v in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"))
    mallopt = _mallopt()
    if chosen or "threshold" in os.environ.get("GLIBC_TUNABLES", "") or mallopt is None:
        return False
    if not (mallopt(_M_MMAP_THRESHOLD, int(nbytes)) and mallopt(_M_TRIM_THRESHOLD, 2 * int(nbytes))):
        return False
    _heap_limit = int(nbytes)
    return True


def release_freed_memory() -> bool:
    """Collect garbage, then return the allocator's free heap memory to the OS (glibc only).

    Returns True when memory was handed back, False when nothing could be (no glibc, or no
    free memory at the top of any heap).
    """
    gc.collect()
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False
