// Fused training-step kernels (see train_kernels.h). Compiled with -ffp-contract=off so that the
// compiler adds no fused multiply-adds of its own: where torch's kernel uses one (lerp_, addcmul_), so does
// this file, explicitly, and nowhere else. Each loop is cloned for AVX-512, AVX2 and baseline x86-64
// and the best clone is picked when the library loads.
#include "train_kernels.h"

#include <cmath>
#include <cstring>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define BNN_CLONES __attribute__((target_clones("avx512f", "avx2,fma", "default")))
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

}  // namespace

float ap2_nonnegative(float x) { return ap2_nonneg_inline(x); }

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

BNN_CLONES
void clip_binarize(float* __restrict p, int64_t n, float clip, float* __restrict binary,
                   int8_t* __restrict binary_i8) {
  if (clip > 0.0f)
    for (int64_t i = 0; i < n; ++i) p[i] = clip_to(p[i], clip);
  if (binary)
    for (int64_t i = 0; i < n; ++i) binary[i] = sign_pm1(p[i]);
  if (binary_i8)
    for (int64_t i = 0; i < n; ++i) binary_i8[i] = p[i] >= 0.0f ? 1 : -1;
}

}  // namespace bnn_train
