"""``release_freed_memory`` hands the allocator's freed heap back to the OS (glibc Linux)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from at_probe.runs.memory import _malloc_trim

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
