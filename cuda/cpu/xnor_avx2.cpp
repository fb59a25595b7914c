// The AVX2 CPU XNOR kernels: a Harley-Seal popcount over 32-bit half-words, and packing 8 lanes at a time.
// Compiled for any x86-64 target: each function carries its own target attribute (BNN_TARGET_AVX2) and runs
// only where kernels_for picks this table.
#include "xnor_counts.h"

#if BNN_X86

namespace bnn_cpu {
namespace detail {
namespace {

// Threshold form, 8 comparisons per instruction (v >= b as not b > v).
BNN_TARGET_AVX2 void pack_ge_row_i32_avx2(const int32_t* value, const int32_t* bound, int64_t n, uint64_t* out) {
  const int64_t full_words = n / 64;
  for (int64_t w = 0; w < full_words; ++w) {
    uint64_t bits = 0;
    for (int j = 0; j < 8; ++j) {
      const int64_t i = w * 64 + j * 8;
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(value + i));
      const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bound + i));
      const int below = _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(b, v)));
      bits |= (uint64_t)(uint8_t)~below << (8 * j);
    }
    out[w] = bits;
  }
  if (n % 64) pack_ge_row(value + full_words * 64, bound + full_words * 64, n % 64, out + full_words);
}

// The signs as integer tests on the bits (see nonnegative()): a lane is -1 when its sign bit is set or it
// is a positive NaN (as int32, above +inf's pattern), unless it is -0.0.
BNN_TARGET_AVX2 void pack_row_avx2(const float* x, int64_t k, uint64_t* out) {
  const __m256i plus_inf = _mm256_set1_epi32((int32_t)kF32PlusInf);
  const __m256i minus_zero = _mm256_set1_epi32((int32_t)kF32MinusZero);
  const int64_t full_words = k / 64;
  for (int64_t w = 0; w < full_words; ++w) {
    uint64_t bits = 0;
    for (int j = 0; j < 8; ++j) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + w * 64 + j * 8));
      const __m256i negative = _mm256_or_si256(v, _mm256_cmpgt_epi32(v, plus_inf));  // sign bit: -1
      const __m256i minus = _mm256_andnot_si256(_mm256_cmpeq_epi32(v, minus_zero), negative);
      bits |= (uint64_t)(uint8_t)~_mm256_movemask_ps(_mm256_castsi256_ps(minus)) << (8 * j);
    }
    out[w] = bits;
  }
  if (k % 64) out[full_words] = pack_word_scalar(x + full_words * 64, k % 64);
}

// AVX2: a panel of kAvx2MR rows against one of 8 columns, a Harley-Seal tree per row (avx2_row_counts).
constexpr int kAvx2MR = 4;

BNN_TARGET_AVX2 void micro_avx2(const uint64_t* ap, const uint64_t* bp, int64_t words, int64_t k, int rows, int cols,
                                int32_t* c, int64_t ldc) {
  const uint32_t* b32 = reinterpret_cast<const uint32_t*>(bp);
  for (int r = 0; r < rows; ++r) {
    const uint32_t* a32 = reinterpret_cast<const uint32_t*>(ap + r);
    const __m256i out = avx2_products(avx2_row_counts<kAvx2MR>(a32, b32, words), k);
    if (cols == kAvx2NR) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(c + r * ldc), out);
    } else {
      int32_t lanes[kAvx2NR];
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(lanes), out);
      for (int j = 0; j < cols; ++j) c[r * ldc + j] = lanes[j];
    }
  }
}

// b's panels for micro_avx2: 32-bit half-words (see xnor_counts.h).
void pack_half_word_panels(const uint64_t* src, int64_t rows, int64_t words, int64_t k, int64_t p0, int64_t p1,
                           uint64_t* out) {
  const uint64_t last_mask = last_word_mask(k);
  for (int64_t p = p0; p < p1; ++p) {
    uint32_t* panel = reinterpret_cast<uint32_t*>(out + p * words * kAvx2NR);
    for (int i = 0; i < kAvx2NR; ++i) {
      const int64_t row = p * kAvx2NR + i;
      for (int64_t w = 0; w < words; ++w) {
        uint64_t word = row < rows ? src[row * words + w] : 0;
        if (w == words - 1) word &= last_mask;
        panel[(w * 2) * kAvx2NR + i] = (uint32_t)word;
        panel[(w * 2 + 1) * kAvx2NR + i] = (uint32_t)(word >> 32);
      }
    }
  }
}

BNN_TARGET_AVX2 void conv_threshold_rows_avx2(const ConvThreshold& t, int64_t r0, int64_t r1, int32_t* scratch,
                                              uint64_t* out) {
  conv_threshold_rows_impl(t, r0, r1, scratch, out, pack_ge_row_i32_avx2);
}

constexpr IsaKernels kAvx2Kernels{{kAvx2MR, kAvx2NR}, micro_avx2, pack_half_word_panels, true,
                                  pack_row_avx2, pack_ge_row_i32_avx2, conv_threshold_rows_avx2, few_rows_avx2,
                                  nibble_tables_avx2, nibble_row_avx2, float_sign_word_avx2};

}  // namespace

const IsaKernels& avx2_kernels() { return kAvx2Kernels; }

}  // namespace detail
}  // namespace bnn_cpu
#endif  // BNN_X86
