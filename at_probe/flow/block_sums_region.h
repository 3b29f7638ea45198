// One row's sums over one key region: the probe's hot loop (block_sums.cpp), free of torch so
// that a test can compile it alone and check that it vectorizes (tests/unit/test_block_sums.py).
#pragma once

#include <cstdint>

// glibc's vector logf (libmvec), declared here rather than through -ffast-math, which would also
// drop IEEE semantics (NaN, infinities). GCC calls it only under -fno-math-errno, and with AVX2
// (no mask registers) the select below also needs -fno-trapping-math (block_sums.py's flags).
extern "C" float logf(float) noexcept __attribute__((__simd__("notinbranch")));

// Keys a .. b - 1 of row (b - 1 < 2**31): mass m, position-weighted mass w and sum of p log p e,
// as float sums (the caller adds regions up in double).
inline void region_sums(const float* row, int64_t a, int64_t b, float& mass, float& weighted, float& plogp) {
  float m = 0, w = 0, e = 0;
#pragma omp simd reduction(+ : m, w, e)
  for (int64_t k = a; k < b; ++k) {
    const float x = row[k];
    m += x;
    w += x * static_cast<float>(static_cast<int32_t>(k));  // int64 to float has no AVX2 vector form
    e += x > 0.0f ? x * logf(x) : 0.0f;  // zeros and rounding negatives count as 0; NaN too (m keeps it)
  }
  mass = m;
  weighted = w;
  plogp = e;
}
