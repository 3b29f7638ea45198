// FlowProbe's per-row sums over a block of attention weights in one pass (at_probe/flow/block_sums.py).
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "block_sums_region.h"

// p: [head, rows, keys] float32, keys contiguous (fewer than 2**31); row r is the query at
// position first + r and reads keys 0 .. first + r only (a causal pattern is zero after them).
// edges: [region + 1] int64 key bounds. Returns float64 [head, rows, region] mass, [head, rows]
// position-weighted mass and [head, rows] sum of p log p over the row's positive entries.
std::vector<torch::Tensor> block_sums(const torch::Tensor& p, const torch::Tensor& edges, int64_t first) {
  TORCH_CHECK(p.dim() == 3 && p.scalar_type() == torch::kFloat32 && p.device().is_cpu() && p.stride(2) == 1,
              "block_sums: p must be a CPU float32 [head, rows, keys] tensor with contiguous keys");
  TORCH_CHECK(edges.dim() == 1 && edges.scalar_type() == torch::kInt64 && edges.is_contiguous() && edges.size(0) >= 2,
              "block_sums: edges must be a contiguous int64 vector of at least two bounds");
  const int64_t heads = p.size(0), rows = p.size(1), keys = p.size(2), regions = edges.size(0) - 1;
  TORCH_CHECK(keys <= INT32_MAX, "block_sums: at most 2**31 - 1 keys");
  const auto options = torch::TensorOptions().dtype(torch::kFloat64);
  auto mass = torch::zeros({heads, rows, regions}, options);
  auto weighted = torch::zeros({heads, rows}, options);
  auto plogp = torch::zeros({heads, rows}, options);
  const float* base = p.data_ptr<float>();
  const int64_t* bounds = edges.data_ptr<int64_t>();
  double* mass_out = mass.data_ptr<double>();
  double* weighted_out = weighted.data_ptr<double>();
  double* plogp_out = plogp.data_ptr<double>();
  // rows in parallel over torch's threads (inline on one thread)
  at::parallel_for(0, heads * rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {  // i: head * rows + row
      const int64_t h = i / rows, r = i % rows;
      const float* row = base + h * p.stride(0) + r * p.stride(1);
      const int64_t seen = std::min<int64_t>(keys, first + r + 1);
      double row_weighted = 0, row_plogp = 0;
      for (int64_t j = 0; j < regions; ++j) {
        const int64_t a = std::max<int64_t>(bounds[j], 0), b = std::min<int64_t>(bounds[j + 1], seen);
        float m, w, e;
        region_sums(row, a, b, m, w, e);
        mass_out[i * regions + j] = m;
        row_weighted += w;
        row_plogp += e;
      }
      weighted_out[i] = row_weighted;
      plogp_out[i] = row_plogp;
    }
  });
  return {mass, weighted, plogp};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("block_sums", &block_sums, "FlowProbe's per-row block sums", py::call_guard<py::gil_scoped_release>());
}
