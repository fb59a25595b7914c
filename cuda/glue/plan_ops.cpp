// The torch glue of the few-row XNOR kernel (cpu/xnor_kernels.h xnor_few_rows), on its own for the tests.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <climits>
#include <optional>
#include <vector>

#include "op_checks.h"
#include "torch_cpu.h"

namespace {

// The few-row kernel on its own (the tests' entry): a (rows <= 8, words) packed, b (n, words) packed, both with
// zero bits past k; int32 (rows, n) products, or with bound (n int32) the packed bits of product >= bound, or with
// planes the one row sum_r 2^r product_r. Columns go to the kernel words_per_call * 64 at a time.
at::Tensor xnor_few_rows(const at::Tensor& a, const at::Tensor& b, int64_t k, const std::optional<at::Tensor>& bound,
                         bool planes, int64_t words_per_call) {
  bnn_ops::check_packed_pair(a, b, k);
  TORCH_CHECK(a.device().is_cpu() && a.size(0) >= 1 && a.size(0) <= bnn_cpu::kMaxFewRows,
              "bnnctl::xnor_few_rows takes 1 to ", bnn_cpu::kMaxFewRows, " rows of a on the CPU");
  TORCH_CHECK(words_per_call >= 1, "bnnctl::xnor_few_rows: words_per_call must be positive");
  const bnn_cpu::Isa isa = bnn_glue::current_isa();
  const int64_t rows = a.size(0), n = b.size(0), words = b.size(1), out_words = bnn_ops::words_for(n);
  const int64_t nr = bnn_cpu::panel_shape(isa).cols, panels = (n + nr - 1) / nr;
  std::vector<uint64_t> b_panels((size_t)(std::max<int64_t>(panels, 1) * words * nr));
  bnn_cpu::pack_b_panels(isa, reinterpret_cast<const uint64_t*>(b.data_ptr<int64_t>()), n, words, k, 0, panels,
                         b_panels.data());
  std::vector<int32_t> padded;  // the kernels read whole vectors of bounds: padded to a multiple of 64
  if (bound) {
    TORCH_CHECK(bound->dim() == 1 && bound->size(0) == n && bound->scalar_type() == at::kInt && bound->is_contiguous(),
                "bnnctl::xnor_few_rows: bound must be ", n, " contiguous int32 values");
    padded.assign((size_t)(out_words * 64), INT32_MAX);
    std::copy(bound->data_ptr<int32_t>(), bound->data_ptr<int32_t>() + n, padded.begin());
  }
  const int64_t out_rows = planes ? 1 : rows;
  at::Tensor out = bound ? at::empty({out_rows, out_words}, a.options())
                         : at::empty({out_rows, n}, a.options().dtype(at::kInt));
  const bnn_cpu::FewRowsOutput o{bound ? nullptr : out.data_ptr<int32_t>(),
                                 bound ? reinterpret_cast<uint64_t*>(out.data_ptr<int64_t>()) : nullptr,
                                 bound ? padded.data() : nullptr, bound ? out_words : n, planes};
  for (int64_t w = 0; w < out_words; w += words_per_call)
    bnn_cpu::xnor_few_rows(isa, reinterpret_cast<const uint64_t*>(a.data_ptr<int64_t>()), (int)rows, words, k,
                           b_panels.data(), 64 * w, std::min(n, 64 * (w + words_per_call)), o);
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(bnnctl, m) {
  m.def("xnor_few_rows(Tensor a, Tensor b, int k, Tensor? bound, bool planes, int words_per_call) -> Tensor",
        &xnor_few_rows);
}
