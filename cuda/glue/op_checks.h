// Argument checks shared by the CPU and CUDA op implementations (inference_ops.cpp, inference_ops_cuda.cpp).
// bnnctl/kernels/__init__.py checks the same things first and raises one-sentence user errors; these
// are the safety net for direct torch.ops.bnnctl calls.
#pragma once
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdint>
#include <limits>

namespace bnn_ops {

inline int64_t words_for(int64_t k) { return (k + 63) / 64; }

// The XNOR products are int32: k - 2 * popcount must fit, and the threshold form needs k + 1 too.
constexpr int64_t kMaxK = std::numeric_limits<int32_t>::max() - 1;

inline void check_pack_input(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 2, "bnnctl::pack expects a 2-D (rows, k) tensor, got ", x.dim(), " dimensions");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "bnnctl::pack expects float32 or float64, got ", x.scalar_type());
  TORCH_CHECK(x.is_contiguous(), "bnnctl::pack expects a contiguous tensor");
}

// pack_ge(value, bound): value (rows, n) int32 or float32, bound (n,) of the same dtype and device.
inline void check_pack_ge_input(const at::Tensor& value, const at::Tensor& bound) {
  TORCH_CHECK(value.dim() == 2 && bound.dim() == 1 && bound.size(0) == value.size(1),
              "bnnctl::pack_ge expects values (rows, n) and n bounds, got shapes ", value.sizes(), " and ",
              bound.sizes());
  TORCH_CHECK((value.scalar_type() == at::kInt || value.scalar_type() == at::kFloat) &&
                  bound.scalar_type() == value.scalar_type(),
              "bnnctl::pack_ge expects int32 or float32 values and bounds of the same dtype, got ",
              value.scalar_type(), " and ", bound.scalar_type());
  TORCH_CHECK(value.is_contiguous() && bound.is_contiguous(), "bnnctl::pack_ge expects contiguous tensors");
  TORCH_CHECK(value.device() == bound.device(), "bnnctl::pack_ge: values and bounds are on different devices");
}

inline void check_packed_pair(const at::Tensor& a, const at::Tensor& b, int64_t k) {
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2, "bnnctl::xnor_gemm expects 2-D packed tensors");
  TORCH_CHECK(a.scalar_type() == at::kLong && b.scalar_type() == at::kLong,
              "bnnctl::xnor_gemm expects int64 packed words, got ", a.scalar_type(), " and ", b.scalar_type());
  TORCH_CHECK(a.is_contiguous() && b.is_contiguous(), "bnnctl::xnor_gemm expects contiguous tensors");
  TORCH_CHECK(a.device() == b.device(), "bnnctl::xnor_gemm: a and b are on different devices");
  TORCH_CHECK(k >= 0 && k <= kMaxK, "bnnctl::xnor_gemm: k must be in [0, ", kMaxK, "], got ", k);
  TORCH_CHECK(a.size(1) == words_for(k) && b.size(1) == words_for(k), "bnnctl::xnor_gemm: k = ", k, " needs ",
              words_for(k), " words per row, got ", a.size(1), " and ", b.size(1));
}

// The integer boundary of a real threshold t for an integer dot product in [-k, k]: dot >= t exactly when
// dot >= ceil(t); clamped to [-k, k + 1] (-k: always, k + 1: never). t must be finite; k <= kMaxK.
inline int32_t threshold_bound(double t, int64_t k) {
  if (t <= static_cast<double>(-k)) return static_cast<int32_t>(-k);
  if (t > static_cast<double>(k)) return static_cast<int32_t>(k + 1);
  return static_cast<int32_t>(std::ceil(t));
}

// Per-column thresholds of xnor_tc_gemm's packed-bits form, for b with n rows, as the int32 boundaries the
// kernels compare the int32 products with (bit = dot >= bound). int32 thresholds are boundaries already;
// float32 and float64 ones are converted once, in float64 on the host, so the comparison is exact (a float32
// comparison is not: 2^24 + 1 has no float32, and a float64 threshold may round across an integer).
inline at::Tensor threshold_bounds(const at::Tensor& thresh, const at::Tensor& b, int64_t k) {
  TORCH_CHECK(thresh.dim() == 1 && thresh.size(0) == b.size(0), "bnnctl::xnor_tc_gemm expects ", b.size(0),
              " thresholds (one per row of b), got shape ", thresh.sizes());
  TORCH_CHECK(thresh.device() == b.device(), "bnnctl::xnor_tc_gemm: thresholds are on another device");
  const at::ScalarType type = thresh.scalar_type();
  if (type == at::kInt) return thresh.contiguous();
  TORCH_CHECK(type == at::kFloat || type == at::kDouble,
              "bnnctl::xnor_tc_gemm expects float32, float64 or int32 thresholds, got ", type);
  TORCH_CHECK(k >= 0 && k <= kMaxK, "bnnctl::xnor_tc_gemm: k must be in [0, ", kMaxK, "], got ", k);
  const at::Tensor host = thresh.to(at::Device(at::kCPU), at::kDouble).contiguous();  // widening: exact
  at::Tensor bounds = at::empty({host.size(0)}, host.options().dtype(at::kInt));
  const double* t = host.data_ptr<double>();
  int32_t* out = bounds.data_ptr<int32_t>();
  for (int64_t j = 0; j < host.size(0); ++j) {
    TORCH_CHECK(std::isfinite(t[j]), "bnnctl::xnor_tc_gemm: threshold ", j, " is ", t[j],
                ", but thresholds must be finite numbers");
    out[j] = threshold_bound(t[j], k);
  }
  return bounds.to(b.device(), at::kInt);
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
