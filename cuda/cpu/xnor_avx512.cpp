// The AVX-512 VPOPCNTDQ CPU XNOR kernels: xor + vpopcntq per word, and packing 16 lanes at a time. Compiled
// for any x86-64 target: each function carries its own target attribute (BNN_TARGET_AVX512) and runs only
// where kernels_for picks this table.
#include "xnor_counts.h"

#if BNN_X86

namespace bnn_cpu {
namespace detail {
namespace {

// Threshold form, 16 comparisons per instruction; the ragged end goes through the scalar loop.
BNN_TARGET_AVX512 void pack_ge_row_i32_avx512(const int32_t* value, const int32_t* bound, int64_t n, uint64_t* out) {
  const int64_t full_words = n / 64;
  for (int64_t w = 0; w < full_words; ++w) {
    uint64_t bits = 0;
    for (int j = 0; j < 4; ++j) {
      const int64_t i = w * 64 + j * 16;
      const __m512i v = _mm512_loadu_si512(value + i), b = _mm512_loadu_si512(bound + i);
      bits |= (uint64_t)_mm512_cmpge_epi32_mask(v, b) << (16 * j);
    }
    out[w] = bits;
  }
  if (n % 64) pack_ge_row(value + full_words * 64, bound + full_words * 64, n % 64, out + full_words);
}

// Unsigned integer tests on the bits (see nonnegative()): at most +inf's pattern, or exactly -0.0.
BNN_TARGET_AVX512 void pack_row_avx512(const float* x, int64_t k, uint64_t* out) {
  const __m512i plus_inf = _mm512_set1_epi32((int32_t)kF32PlusInf);
  const __m512i minus_zero = _mm512_set1_epi32((int32_t)kF32MinusZero);
  const int64_t full_words = k / 64;
  for (int64_t w = 0; w < full_words; ++w) {
    uint64_t bits = 0;
    for (int j = 0; j < 4; ++j) {
      const __m512i v = _mm512_loadu_si512(x + w * 64 + j * 16);
      const __mmask16 plus = _mm512_cmple_epu32_mask(v, plus_inf) | _mm512_cmpeq_epi32_mask(v, minus_zero);
      bits |= (uint64_t)plus << (16 * j);
    }
    out[w] = bits;
  }
  if (k % 64) out[full_words] = pack_word_scalar(x + full_words * 64, k % 64);
}

// AVX-512 VPOPCNTDQ: MR x NV = 24 accumulators, NV b vectors and a broadcast word of a in the 32 zmm registers
// (avx512_counts). 32 columns per panel rather than 24 (8 x 3): channel counts are powers of two, so no panel is
// part padding (a 128-wide conv layer computed 144 columns), and the CIFAR-10 ConvNet ran 12% faster.
constexpr int kAvx512MR = 6;

// k - 2 * popcount in 64-bit lanes, narrowed to int32 on the store; lanes past cols are not written.
template <int MR, int NV>
BNN_TARGET_AVX512 BNN_INLINE void micro_avx512(const uint64_t* ap, const uint64_t* bp, int64_t words, int64_t k,
                                               int rows, int cols, int32_t* c, int64_t ldc) {
  __m512i acc[MR][NV];
  avx512_counts<MR, NV>(ap, {MR, 1}, bp, words, acc);
  const __m512i kv = _mm512_set1_epi64(k);
  for (int r = 0; r < rows; ++r)
    for (int v = 0; v < NV; ++v) {
      const int left = cols - 8 * v;
      if (left <= 0) break;
      const __mmask8 lanes = left >= 8 ? (__mmask8)0xff : (__mmask8)((1u << left) - 1u);
      _mm512_mask_cvtepi64_storeu_epi32(c + r * ldc + 8 * v, lanes, _mm512_sub_epi64(kv, _mm512_slli_epi64(acc[r][v], 1)));
    }
}

BNN_TARGET_AVX512 void micro_avx512_full(const uint64_t* ap, const uint64_t* bp, int64_t words, int64_t k, int rows,
                                         int cols, int32_t* c, int64_t ldc) {
  micro_avx512<kAvx512MR, kAvx512NV>(ap, bp, words, k, rows, cols, c, ldc);
}

BNN_TARGET_AVX512 void conv_threshold_rows_avx512(const ConvThreshold& t, int64_t r0, int64_t r1, int32_t* scratch,
                                                  uint64_t* out) {
  conv_threshold_rows_impl(t, r0, r1, scratch, out, pack_ge_row_i32_avx512);
}

constexpr IsaKernels kAvx512Kernels{{kAvx512MR, kAvx512NR}, micro_avx512_full, pack_word_panels<kAvx512NR>, false,
                                    pack_row_avx512, pack_ge_row_i32_avx512, conv_threshold_rows_avx512,
                                    few_rows_avx512, nibble_tables_avx2, nibble_row_avx2,
                                    float_sign_word_avx2};

}  // namespace

const IsaKernels& avx512_kernels() { return kAvx512Kernels; }

}  // namespace detail
}  // namespace bnn_cpu
#endif  // BNN_X86
