"""``release_freed_memory`` hands the allocator's freed heap back to the OS (glibc Linux)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from at_probe.runs.memory import _malloc_trim, _mallopt

CHILD = """
import sys
from at_probe.runs.memory import release_freed_memory
def rss():
    return int([l for l in open('/proc/self/status') if l.startswith('VmRSS')][0].split()[1]) // 1024
big = bytearray(30 * 2**20); del big             # glibc then serves chunks below 30 MB from its heap
chunks = [bytearray(2**20) for _ in range(300)]  # 300 MB of 1 MB chunks, as a pass's patterns
keep = chunks[-1]; del chunks                    # freed, except the chunk at the top
before = rss()
release_freed_memory()
print(before, rss())
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists() or _malloc_trim() is None,
                    reason="needs Linux with glibc (malloc_trim)")
def test_freed_heap_memory_is_returned():
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    before, after = map(int, out.stdout.split())
    assert before - after > 200, f"resident {before} MB before, {after} MB after: the freed heap was kept"


FAULTS_CHILD = """
import resource, sys
from at_probe.runs.memory import heap_allocations_up_to
if sys.argv[1] == "raise":
    assert heap_allocations_up_to(48 * 2**20)
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for size in range(40, 44):                  # growing tensors of 40-43 MB, as a chunked pass's blocks
    block = bytearray(size * 2**20)         # bytearray writes every page, as a tensor's kernel does
    del block
before = faults()
for size in range(40, 44):
    block = bytearray(size * 2**20)
    del block
print(faults() - before)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists() or _mallopt() is None,
                    reason="needs Linux with glibc (mallopt)")
def test_large_blocks_reuse_the_heap_once_the_threshold_is_raised():
    def faults(mode: str, **env: str) -> int:
        out = subprocess.run([sys.executable, "-c", FAULTS_CHILD, mode], capture_output=True, text=True,
                             check=True, cwd=Path(__file__).resolve().parents[2],
                             env={"PATH": "/usr/bin:/bin", **env})
        return int(out.stdout)

    probe = "import ctypes; print(ctypes.CDLL(None).mallopt(-3, 48 << 20))"  # M_MMAP_THRESHOLD, 48 MiB
    accepts = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    if accepts.stdout.strip() != "1":
        pytest.skip("the C library refuses mmap thresholds above 32 MiB (glibc's manual gives that limit)")
    pages = 4 * 41 * 2**20 // 4096  # four blocks of 40-43 MB
    assert faults("keep") > pages // 2, "glibc's default should map fresh pages for blocks above 32 MiB"
    assert faults("raise") < pages // 20, "the freed blocks were mapped anew: the threshold was not raised"
    # a threshold the user set is theirs: left alone (here: the default's behaviour stays)
    assert faults("keep", MALLOC_TRIM_THRESHOLD_="131072") > pages // 2


def test_heap_threshold_is_never_lowered_nor_set_over_the_users(monkeypatch):
    import at_probe.runs.memory as memory

    calls = []
    monkeypatch.setattr(memory, "_mallopt", lambda: lambda param, value: calls.append((param, value)) or 1)
    monkeypatch.setattr(memory, "_heap_limit", 0)
    for var in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES"):
        monkeypatch.delenv(var, raising=False)
    assert memory.heap_allocations_up_to(10 * 2**20) and calls == []  # glibc's adaptive threshold covers it
    assert memory.heap_allocations_up_to(40 * 2**20)
    assert calls == [(memory._M_MMAP_THRESHOLD, 40 * 2**20), (memory._M_TRIM_THRESHOLD, 80 * 2**20)]
    assert memory.heap_allocations_up_to(35 * 2**20) and len(calls) == 2  # never lowered
    assert not memory.heap_allocations_up_to(2**30) and len(calls) == 2  # its double beyond mallopt's int
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "1073741824")
    assert not memory.heap_allocations_up_to(50 * 2**20) and len(calls) == 2
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=4096")
    assert not memory.heap_allocations_up_to(50 * 2**20) and len(calls) == 2
