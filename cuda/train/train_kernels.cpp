// Fused training-step kernels (see train_kernels.h). Compiled with -ffp-contract=off so that the
// compiler adds no fused multiply-adds of its own: where torch's kernel uses one (lerp_, addcmul_), so does
// this file, explicitly, and nowhere else. Each loop is cloned for x86-64-v4 (AVX-512), x86-64-v3 (AVX2 and
// FMA) and baseline x86-64, and the best clone is picked when the library loads.
#include "train_kernels.h"

#include <cmath>
#include <cstring>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
// One clone per x86-64 level: in target_clones a comma separates clones, so "avx2,fma" would make an AVX2
// clone without FMA (std::fma a libm call, the loop left scalar) and an FMA clone without AVX2.
#define BNN_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define BNN_CLONES
#endif

namespace bnn_train {
namespace {

inline uint32_t float_bits(float x) {
  uint32_t b;
  std::memcpy(&b, &x, sizeof b);
  return b;
}

inline float bits_float(uint32_t b) {
  float x;
  std::memcpy(&x, &b, sizeof x);
  return x;
}

// The mantissa bits of the smallest float >= sqrt(2): a normal x = 2^e * 1.f rounds up to 2^(e+1)
// exactly when its mantissa bits reach this (sqrt(2) itself is irrational, so there is no tie).
constexpr uint32_t kSqrt2Mantissa = 0x3504F4u;

// Branch-free so that the loops around it vectorize. Subnormal x is first scaled by 2^64 into the
// normal range (exact), and its AP2 scaled back (exact: a power of two >= 2^-149).
inline float ap2_nonneg_inline(float x) {
  const bool tiny = x < 0x1p-126f;
  const float scaled = tiny ? x * 0x1p64f : x;
  const uint32_t b = float_bits(scaled);
  const uint32_t exponent = b >> 23;  // sign bit is 0
  const uint32_t mantissa = b & 0x7FFFFFu;
  const uint32_t rounded = (exponent + (mantissa >= kSqrt2Mantissa ? 1u : 0u)) << 23;
  const float result = bits_float(exponent == 0 ? 0u : rounded);
  return tiny ? result * 0x1p-64f : result;
}

inline float sign_pm1(float x) { return x >= 0.0f ? 1.0f : -1.0f; }

// Comparisons rather than fmin/fmax, which vectorize only under finite-math flags; a NaN stays NaN,
// as with torch's clamp_.
inline float clip_to(float x, float clip) {
  if (!(clip > 0.0f)) return x;
  const float low = x < -clip ? -clip : x;
  return low > clip ? clip : low;
}

inline float max_of(float a, float b) { return a < b ? b : a; }

// AP2 with the sign of x (+-0 stays +-0); a NaN stays NaN, where the bit arithmetic would give inf or 0.
inline float ap2_inline(float x) {
  const float signed_power = std::copysign(ap2_nonneg_inline(std::fabs(x)), x);
  return x != x ? x : signed_power;
}

// core/binarize.hard_sigmoid: clamp((x + 1) / 2, 0, 1), a NaN staying NaN as with torch's clamp.
inline float hard_sigmoid(float x) {
  const float p = (x + 1.0f) / 2.0f;
  const float low = p < 0.0f ? 0.0f : p;
  return low > 1.0f ? 1.0f : low;
}

}  // namespace

float ap2_nonnegative(float x) { return ap2_nonneg_inline(x); }

float ap2(float x) { return ap2_inline(x); }

BNN_CLONES
void shift_adamax(float* __restrict p, const float* __restrict g, float* __restrict m, float* __restrict v,
                  int64_t n, float one_minus_beta1, float beta2, float eps, float step, float clip,
                  float* __restrict binary, int8_t* __restrict binary_i8) {
  const float neg_step = -step;
  for (int64_t i = 0; i < n; ++i) {
    const float gi = g[i];
    const float mi = std::fma(one_minus_beta1, gi - m[i], m[i]);
    const float vi = ap2_nonneg_inline(max_of(v[i] * beta2, std::fabs(gi))) + eps;
    m[i] = mi;
    v[i] = vi;
    p[i] = clip_to(p[i] + (neg_step * mi) / vi, clip);
  }
  if (binary)
    for (int64_t i = 0; i < n; ++i) binary[i] = sign_pm1(p[i]);
  if (binary_i8)
    for (int64_t i = 0; i < n; ++i) binary_i8[i] = p[i] >= 0.0f ? 1 : -1;
}

BNN_CLONES
void adam(float* __restrict p, const float* __restrict g, float* __restrict m, float* __restrict v, int64_t n,
          float one_minus_beta1, float beta2, float one_minus_beta2, float eps, float step, float bias2_sqrt,
          float clip, float* __restrict binary, int8_t* __restrict binary_i8) {
  const float neg_step = -step;
  for (int64_t i = 0; i < n; ++i) {
    const float gi = g[i];
    const float mi = std::fma(one_minus_beta1, gi - m[i], m[i]);
    const float vi = std::fma(one_minus_beta2 * gi, gi, v[i] * beta2);  // addcmul_'s rounding
    m[i] = mi;
    v[i] = vi;
    const float denom = std::sqrt(vi) / bias2_sqrt + eps;
    p[i] = clip_to(p[i] + (neg_step * mi) / denom, clip);
  }
  if (binary)
    for (int64_t i = 0; i < n; ++i) binary[i] = sign_pm1(p[i]);
  if (binary_i8)
    for (int64_t i = 0; i < n; ++i) binary_i8[i] = p[i] >= 0.0f ? 1 : -1;
}

// ---- shift-based BN and binarized activations ------------------------------------------------------------
// Loops over one row at a time with the per-column vectors alongside, so that the inner loop vectorizes.

BNN_CLONES
void shift_bn_center(const float* __restrict x, const float* __restrict mean, int64_t rows, int64_t cols,
                     float* __restrict centered_ap2, float* __restrict variance_terms) {
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t row = r * cols;
    for (int64_t c = 0; c < cols; ++c) {
      const float centered = x[row + c] - mean[c];
      const float power = ap2_inline(centered);
      centered_ap2[row + c] = power;
      variance_terms[row + c] = power * centered;
    }
  }
}

BNN_CLONES
void shift_bn_normalize(const float* __restrict x, const float* __restrict mean, const float* __restrict inv_std_ap2,
                        const float* __restrict weight_ap2, const float* __restrict bias, int64_t rows, int64_t cols,
                        float* __restrict out, float* __restrict normalized_ap2) {
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t row = r * cols;
    for (int64_t c = 0; c < cols; ++c) {
      // x - mean again rather than a stored copy: the same bits, one array less to write and read
      const float normalized = (x[row + c] - mean[c]) * inv_std_ap2[c];
      out[row + c] = normalized * weight_ap2[c] + bias[c];
      normalized_ap2[row + c] = ap2_inline(normalized);
    }
  }
}

BNN_CLONES
void shift_bn_backward_terms(const float* __restrict g, const float* __restrict centered_ap2,
                             const float* __restrict normalized_ap2, int64_t rows, int64_t cols,
                             float* __restrict projection_terms, float* __restrict weight_terms) {
  const int64_t n = rows * cols;
  for (int64_t i = 0; i < n; ++i) {
    projection_terms[i] = centered_ap2[i] * g[i];
    weight_terms[i] = normalized_ap2[i] * g[i];
  }
}

BNN_CLONES
void shift_bn_grad_input(const float* __restrict g, const float* __restrict centered_ap2,
                         const float* __restrict g_mean, const float* __restrict projection,
                         const float* __restrict scale, int64_t rows, int64_t cols, float* __restrict grad_x) {
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t row = r * cols;
    for (int64_t c = 0; c < cols; ++c)
      grad_x[row + c] = ((g[row + c] - g_mean[c]) - centered_ap2[row + c] * projection[c]) * scale[c];
  }
}

BNN_CLONES
void sign_activation(const float* __restrict x, const float* __restrict u, int64_t n, float* __restrict out,
                     uint8_t* __restrict pass_gradient) {
  if (u) {
    for (int64_t i = 0; i < n; ++i) out[i] = u[i] < hard_sigmoid(x[i]) ? 1.0f : -1.0f;
  } else {
    // core/binarize.sign_pm1: x + 0 turns -0.0 into +0.0, so that both zeros give +1
    for (int64_t i = 0; i < n; ++i) out[i] = std::copysign(1.0f, x[i] + 0.0f);
  }
  for (int64_t i = 0; i < n; ++i) pass_gradient[i] = std::fabs(x[i]) <= 1.0f ? 1 : 0;
}

BNN_CLONES
void masked_gradient(const float* __restrict grad, const uint8_t* __restrict pass_gradient, int64_t n,
                     float* __restrict grad_x) {
  for (int64_t i = 0; i < n; ++i) grad_x[i] = grad[i] * static_cast<float>(pass_gradient[i]);  // 0 or 1: no branch
}

}  // namespace bnn_train
