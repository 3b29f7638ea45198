"""The probe's per-row block sums: the compiled pass and the torch path against a direct
computation, with the conventions for zeros, rounding negatives and NaN."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from at_probe.flow import block_sums
from at_probe.flow.block_sums import BlockSums
from tests.unit.test_transition import causal_pattern

NO_COMPILER = shutil.which("c++") is None and shutil.which("g++") is None
NO_COMPILER_REASON = "no C++ compiler: the probe's compiled block sums cannot build here"
needs_compiler = pytest.mark.skipif(NO_COMPILER, reason=NO_COMPILER_REASON)


def direct(p: torch.Tensor, edges: list[int], first: int) -> tuple[torch.Tensor, ...]:
    """Row by row in float64: region mass, position-weighted mass, sum p log p (p > 0 only)."""
    heads, rows, keys = p.shape
    mass = torch.zeros(heads, rows, len(edges) - 1, dtype=torch.float64)
    weighted = torch.zeros(heads, rows, dtype=torch.float64)
    plogp = torch.zeros(heads, rows, dtype=torch.float64)
    for h in range(heads):
        for r in range(rows):
            row = p[h, r, : min(keys, first + r + 1)].double()
            for j, (a, b) in enumerate(zip(edges[:-1], edges[1:])):
                mass[h, r, j] = row[a:b].sum()
            weighted[h, r] = (row * torch.arange(len(row), dtype=torch.float64)).sum()
            positive = row[row > 0]
            plogp[h, r] = (positive * positive.log()).sum()
    return mass, weighted, plogp


def block(first: int, rows: int, heads: int = 3, seed: int = 0) -> torch.Tensor:
    """Rows ``first .. first + rows - 1`` of a causal pattern, with keys up to the last row."""
    return causal_pattern(heads=heads, t=first + rows, seed=seed)[0, :, first:].contiguous()


def edited(p: torch.Tensor) -> torch.Tensor:
    """``p`` with a zeroed entry and two rounding negatives (the transition's residue)."""
    p = p.clone()
    p[0, -1, 2] = 0.0  # the last rows see these keys whatever the block's first row
    p[1, -2, 3] = -3e-9
    p[2, -1, 0] = -1e-9
    return p


@pytest.fixture(params=["compiled", "torch"])
def sums(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    if request.param == "compiled":
        if NO_COMPILER:
            pytest.skip(NO_COMPILER_REASON)
        assert block_sums.kernel() is not None, "the compiled block sums did not build"
    else:
        monkeypatch.setattr(block_sums, "kernel", lambda: None)
    return BlockSums()


@pytest.mark.parametrize("first, rows", [(0, 70), (37, 5), (90, 130)])
def test_block_sums_equal_the_direct_computation(sums, first, rows):
    p = edited(block(first, rows))
    edges = [0, 1, 9, 40, first + rows, first + rows + 50]  # the last region lies past every key
    for got, want in zip(sums(p, edges, first), direct(p, edges, first)):
        torch.testing.assert_close(got.double(), want, rtol=2e-5, atol=2e-5)


def test_block_sums_skip_keys_after_the_block(sums):
    """Keys after the block's last row (zero placeholders of a block given every key) are not read."""
    p = block(20, 10)
    padded = torch.cat([p, torch.full((3, 10, 6), 5.0)], dim=-1)
    edges = [0, 1, 15, 36]
    for got, want in zip(sums(padded, edges, 20), sums(p, edges, 20)):
        torch.testing.assert_close(got, want)


@needs_compiler
def test_the_compiled_pass_reads_no_key_after_a_row():
    """Weights after each row's own position (zero in a causal pattern) are not read by the
    compiled pass (the torch path reads some: the callers' patterns are causal)."""
    sums = BlockSums()
    assert block_sums.kernel() is not None
    p = block(20, 10)
    dirty = p.clone()
    for r in range(10):
        dirty[:, r, 20 + r + 1 :] = 7.0
    edges = [0, 1, 15, 30]
    for got, want in zip(sums(dirty, edges, 20), sums(p, edges, 20)):
        torch.testing.assert_close(got, want)


def test_block_sums_from_a_view_and_half_precision(sums):
    """A strided view (a slice of a larger block) and a bfloat16 block give the float32 sums."""
    big = block(10, 40)
    view = big[:, 8:30]  # rows 18 .. 39: head and row strides of the larger block
    edges = [0, 1, 12, 50]
    for got, want in zip(sums(view, edges, 18), direct(view, edges, 18)):
        torch.testing.assert_close(got.double(), want, rtol=2e-5, atol=2e-5)
    half = block(10, 100).bfloat16()  # over 64 rows: converted in sub-blocks
    edges = [0, 1, 12, 110]
    for got, want in zip(sums(half, edges, 10), direct(half.float(), edges, 10)):
        torch.testing.assert_close(got.double(), want, rtol=2e-5, atol=2e-5)


def test_regions_must_cover_the_keys():
    with pytest.raises(ValueError, match="cover"):
        BlockSums()(block(0, 8), [0, 4], 0)
    with pytest.raises(ValueError, match="cover"):
        BlockSums()(block(0, 8), [1, 8], 0)


def test_a_nan_weight_reaches_the_mass_not_the_plogp(sums):
    p = block(0, 30)
    p[1, 20, 7] = float("nan")
    mass, weighted, plogp = sums(p, [0, 1, 10, 30], 0)
    assert mass[1, 20, 1].isnan() and weighted[1, 20].isnan()
    assert plogp.isfinite().all() and mass[1, 19].isfinite().all() and mass[0, 20].isfinite().all()


@needs_compiler
def test_the_compiled_and_torch_paths_agree_on_a_long_block(monkeypatch):
    """Many keys per region (the compiled pass adds them in SIMD lanes, torch in its own order)."""
    p = edited(block(1900, 100, seed=3))
    edges = [0, 1, 300, 1000, 1700, 2000]
    compiled = BlockSums()(p, edges, 1900)
    monkeypatch.setattr(block_sums, "kernel", lambda: None)
    for got, want in zip(BlockSums()(p, edges, 1900), compiled):
        torch.testing.assert_close(got.double(), want, rtol=2e-5, atol=1e-4)


@needs_compiler
def test_the_probe_gives_the_same_measures_either_way(monkeypatch):
    from at_probe.flow.probe import FlowProbe

    pattern = causal_pattern(heads=2, t=150, seed=6)

    def measures() -> dict[str, torch.Tensor]:
        probe = FlowProbe(1, 2, regions=4)
        probe._hook(pattern, hook=SimpleNamespace(name="blocks.0.attn.hook_pattern"))
        result = probe.result()
        return {k: getattr(result, k) for k in ("region_mass", "sink_mass", "entropy", "distance")}

    compiled = measures()
    monkeypatch.setattr(block_sums, "kernel", lambda: None)
    for key, value in measures().items():
        torch.testing.assert_close(value, compiled[key], rtol=1e-5, atol=1e-5, msg=key)


def test_kernel_switched_off_by_the_environment(monkeypatch):
    monkeypatch.setenv(block_sums.KERNEL_ENV, "0")
    block_sums.kernel.cache_clear()
    try:
        assert block_sums.kernel() is None
    finally:
        block_sums.kernel.cache_clear()


def test_a_failed_build_warns_once_and_falls_back(monkeypatch):
    import torch.utils.cpp_extension as cpp

    def fail(**kwargs):
        raise RuntimeError("Error building extension 'at_probe_block_sums'\nblock_sums.cpp:9: error: no compiler\n"
                           "ninja: build stopped: subcommand failed.")

    monkeypatch.setattr(cpp, "load", fail)
    monkeypatch.delenv(block_sums.KERNEL_ENV, raising=False)
    block_sums.kernel.cache_clear()
    try:
        with pytest.warns(UserWarning, match="did not build .*error: no compiler.*torch operations"):
            assert block_sums.kernel() is None
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert block_sums.kernel() is None  # cached: no second warning
    finally:
        block_sums.kernel.cache_clear()


@needs_compiler
def test_loading_the_kernel_keeps_subnormal_floats():
    """The build must not flush subnormals process-wide (as linking with -ffast-math can)."""
    assert block_sums.kernel() is not None
    tiny = torch.tensor([1e-40]) * 1.0
    assert tiny.item() > 0


VECTOR_LOGF = {"DEFAULT": "_ZGVbN4v_logf", "AVX2": "_ZGVdN8v_logf", "AVX512": "_ZGVeN16v_logf"}
"""glibc's vector logf for each build's instruction set (x86-64 vector ABI: SSE, AVX2, AVX-512)."""
DRIVER = r"""
#include <cstdio>
#include <cstdlib>
#include <vector>
#include "block_sums_region.h"
int main(int argc, char** argv) {  // keys a b on the command line, the row's values (%a) on stdin
  std::vector<float> row;
  float x;
  while (std::scanf("%a", &x) == 1) row.push_back(x);
  float m, w, e;
  region_sums(row.data(), std::atol(argv[1]), std::atol(argv[2]), m, w, e);
  std::printf("%a %a %a\n", m, w, e);
}
"""


def _gcc() -> str | None:
    """The C++ compiler torch's build would use (``$CXX``, else ``c++``), if it is GCC: clang
    ignores the vector-function declaration of ``logf``."""
    compiler = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")
    if compiler is None:
        return None
    macros = subprocess.run([compiler, "-dM", "-E", "-x", "c++", os.devnull], capture_output=True, text=True)
    return compiler if "__GNUC__" in macros.stdout and "__clang__" not in macros.stdout else None


def _region_sums(program: Path, row: np.ndarray, a: int, b: int) -> np.ndarray:
    values = " ".join("nan" if np.isnan(v) else float(v).hex() for v in row)
    out = subprocess.run([str(program), str(a), str(b)], input=values, capture_output=True, text=True,
                         check=True)
    return np.array([float.fromhex(v) if v not in ("nan", "-nan") else np.nan for v in out.stdout.split()])


@pytest.mark.skipif(platform.machine() != "x86_64",
                    reason="x86-64 only: the build flags and vector logf names checked are x86-64's")
@pytest.mark.parametrize("capability", VECTOR_LOGF)
def test_the_hot_loop_vectorizes_and_keeps_its_sums_for_every_instruction_set(capability, tmp_path):
    """The region loop, compiled with the build's flags for each CPU capability, calls glibc's
    vector logf (left scalar with AVX2, it took 3.16 ns a weight against 0.54 vectorized, most of
    the probe's cost at 8k tokens), and, up to torch's CPU capability here, gives the direct sums
    with the conventions for zeros, rounding negatives, subnormals and NaN."""
    compiler = _gcc()
    if compiler is None:
        pytest.skip("no GCC: the compiled block sums' vector logf is GCC's (clang builds them scalar)")
    driver = tmp_path / "driver.cpp"
    driver.write_text(DRIVER)
    flags = [*block_sums.CFLAGS, *block_sums.ARCH_FLAGS.get(capability, [])]
    assembly, program = tmp_path / "driver.s", tmp_path / "driver"
    header = Path(block_sums.__file__).parent
    subprocess.run([compiler, *flags, f"-I{header}", "-S", str(driver), "-o", str(assembly)], check=True)
    assert VECTOR_LOGF[capability] in assembly.read_text()
    ranks, here = list(VECTOR_LOGF), torch.backends.cpu.get_cpu_capability()  # DEFAULT < AVX2 < AVX512
    if ranks.index(capability) > (ranks.index(here) if here in ranks else 0):
        return  # beyond what torch runs here: the build's vectorization is all that can be checked
    subprocess.run([compiler, str(assembly), "-o", str(program), "-lmvec"], check=True)
    row = np.random.default_rng(0).dirichlet(np.ones(300)).astype(np.float32)
    row[[5, 6, 120]] = 0.0
    row[7], row[8], row[9] = -3e-9, 1e-40, 0.5  # a rounding negative, a subnormal, one large weight
    for a, b in [(0, 300), (37, 251), (3, 4)]:
        x = row[a:b].astype(np.float64)
        positive = x[x > 0]
        want = [x.sum(), (x * np.arange(a, b)).sum(), (positive * np.log(positive)).sum()]
        np.testing.assert_allclose(_region_sums(program, row, a, b), want, rtol=1e-5, atol=1e-7)
    row[40] = np.nan  # reaches the mass and the weighted mass, not p log p
    m, w, e = _region_sums(program, row, 0, 300)
    assert np.isnan(m) and np.isnan(w) and np.isfinite(e)
