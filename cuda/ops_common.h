// Argument checks shared by the CPU and CUDA op implementations (cuda/ops.cpp, cuda/ops_cuda.cpp).
// bnnctl/kernels/__init__.py checks the same things first and raises one-sentence user errors; these
// are the safety net for direct torch.ops.bnnctl calls.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace bnn_ops {

inline int64_t words_for(int64_t k) { return (k + 63) / 64; }

inline void check_pack_input(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 2, "bnnctl::pack expects a 2-D (rows, k) tensor, got ", x.dim(), " dimensions");
  TORCH_CHECK(x.scalar_type() == at::kFloat, "bnnctl::pack expects float32, got ", x.scalar_type());
  TORCH_CHECK(x.is_contiguous(), "bnnctl::pack expects a contiguous tensor");
}

inline void check_packed_pair(const at::Tensor& a, const at::Tensor& b, int64_t k) {
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2, "bnnctl::xnor_gemm expects 2-D packed tensors");
  TORCH_CHECK(a.scalar_type() == at::kLong && b.scalar_type() == at::kLong,
              "bnnctl::xnor_gemm expects int64 packed words, got ", a.scalar_type(), " and ", b.scalar_type());
  TORCH_CHECK(a.is_contiguous() && b.is_contiguous(), "bnnctl::xnor_gemm expects contiguous tensors");
  TORCH_CHECK(a.device() == b.device(), "bnnctl::xnor_gemm: a and b are on different devices");
  TORCH_CHECK(k >= 0, "bnnctl::xnor_gemm: k must be >= 0, got ", k);
  TORCH_CHECK(a.size(1) == words_for(k) && b.size(1) == words_for(k), "bnnctl::xnor_gemm: k = ", k, " needs ",
              words_for(k), " words per row, got ", a.size(1), " and ", b.size(1));
}

// Per-column thresholds of xnor_tc_gemm's packed-bits form, for b with n rows.
inline void check_thresholds(const at::Tensor& thresh, const at::Tensor& b) {
  TORCH_CHECK(thresh.dim() == 1 && thresh.size(0) == b.size(0), "bnnctl::xnor_tc_gemm expects ", b.size(0),
              " thresholds (one per row of b), got shape ", thresh.sizes());
  TORCH_CHECK(thresh.scalar_type() == at::kFloat && thresh.is_contiguous(),
              "bnnctl::xnor_tc_gemm expects contiguous float32 thresholds");
  TORCH_CHECK(thresh.device() == b.device(), "bnnctl::xnor_tc_gemm: thresholds are on another device");
}

inline void check_float_pair(const at::Tensor& a, const at::Tensor& b) {
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2, "bnnctl::baseline_gemm expects 2-D tensors");
  TORCH_CHECK(a.scalar_type() == at::kFloat && b.scalar_type() == at::kFloat,
              "bnnctl::baseline_gemm expects float32, got ", a.scalar_type(), " and ", b.scalar_type());
  TORCH_CHECK(a.is_contiguous() && b.is_contiguous(), "bnnctl::baseline_gemm expects contiguous tensors");
  TORCH_CHECK(a.device() == b.device(), "bnnctl::baseline_gemm: a and b are on different devices");
  TORCH_CHECK(a.size(1) == b.size(1), "bnnctl::baseline_gemm: a (m, k) and b (n, k) disagree on k: ", a.size(1),
              " vs ", b.size(1));
}

}  // namespace bnn_ops
