// The few-row XNOR kernels (xnor_few_rows in xnor_kernels.h), one per instruction set, each with its own target
// attribute; the tables of xnor_{scalar,avx2,avx512}.cpp name them. a's rows are read as they are (row-major),
// so a batch of one image is not copied into panels; each panel of b (the layout of the many-row kernels, so one
// copy of the weights serves both) is read once for all the rows, and its outputs leave the registers through
// the epilogue: int32 values, or the threshold compared and packed into the next layer's bits.
#include "xnor_counts.h"

namespace bnn_cpu {
namespace detail {
namespace {

inline uint64_t low_bits(int cols) { return cols >= 64 ? ~0ull : (1ull << cols) - 1ull; }

// A panel's bits (columns j0.. of one output row) into their word: the first panel of a word (j0 % 64 == 0)
// replaces it, the others are ORed in; the panels of a word come in order, within one call.
inline void put_bits(const FewRowsOutput& out, int64_t row, int64_t j0, uint64_t bits) {
  uint64_t& word = out.bits[row * out.ld + j0 / 64];
  const int shift = (int)(j0 % 64);
  word = (shift == 0 ? 0 : word) | (bits << shift);
}

// ---- scalar: panels of kScalarNR columns, rows two at a time -------------------------------------------------

template <int R, typename Popcount>
BNN_INLINE void scalar_products(const uint64_t* a, int64_t words, const uint64_t* panel, int64_t k,
                                int64_t (*v)[kScalarNR], Popcount popcount) {
  int64_t popc[R][kScalarNR] = {};
  scalar_counts<R, kScalarNR>(a, {1, words}, panel, words, popc, popcount);
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < kScalarNR; ++j) v[r][j] = k - 2 * popc[r][j];
}

inline void scalar_put_row(const FewRowsOutput& out, int64_t row, int64_t j0, int cols, const int64_t* v) {
  if (out.bound) {
    uint64_t bits = 0;
    for (int j = 0; j < cols; ++j) bits |= (uint64_t)(v[j] >= out.bound[j0 + j]) << j;
    put_bits(out, row, j0, bits);
  } else {
    for (int j = 0; j < cols; ++j) out.values[row * out.ld + j0 + j] = (int32_t)v[j];
  }
}

template <typename Popcount>
BNN_INLINE void few_rows_scalar_impl(const uint64_t* a, int rows, int64_t words, int64_t k, const uint64_t* bp,
                                     int64_t n0, int64_t n1, const FewRowsOutput& out, Popcount popcount) {
  constexpr int NR = kScalarNR;
  for (int64_t j0 = n0; j0 < n1; j0 += NR) {
    const uint64_t* panel = bp + (j0 / NR) * words * NR;
    const int cols = (int)std::min<int64_t>(NR, n1 - j0);
    int64_t sum[NR] = {};
    for (int r = 0; r < rows; r += kScalarMR) {
      int64_t v[kScalarMR][NR];
      const int chunk = std::min(kScalarMR, rows - r);
      if (chunk == 2)
        scalar_products<2>(a + r * words, words, panel, k, v, popcount);
      else
        scalar_products<1>(a + r * words, words, panel, k, v, popcount);
      for (int i = 0; i < chunk; ++i) {
        if (!out.planes) {
          scalar_put_row(out, r + i, j0, cols, v[i]);
          continue;
        }
        for (int j = 0; j < NR; ++j) sum[j] += v[i][j] * (int64_t{1} << (r + i));
      }
    }
    if (out.planes) scalar_put_row(out, 0, j0, cols, sum);
  }
}

#if BNN_X86

// ---- AVX2: panels of 8 columns (32-bit half-words), one Harley-Seal tree per row ---------------------------------

BNN_TARGET_AVX2 BNN_INLINE void avx2_put_row(const FewRowsOutput& out, int64_t row, int64_t j0, int cols, __m256i v) {
  if (out.bound) {
    const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(out.bound + j0));
    const int below = _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(b, v)));  // v >= b: not b > v
    put_bits(out, row, j0, (uint64_t)(uint8_t)~below & low_bits(cols));
  } else if (cols == kAvx2NR) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out.values + row * out.ld + j0), v);
  } else {
    int32_t lanes[kAvx2NR];
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(lanes), v);
    for (int j = 0; j < cols; ++j) out.values[row * out.ld + j0 + j] = lanes[j];
  }
}

// ---- AVX-512 VPOPCNTDQ: panels of 32 columns, rows four at a time (16 accumulators) -----------------------------

constexpr int kAvx512FewMR = 4;

template <int R>
BNN_TARGET_AVX512 BNN_INLINE void avx512_products(const uint64_t* a, int64_t words, const uint64_t* panel, int64_t k,
                                                  __m512i (*v)[kAvx512NV]) {
  __m512i(&acc)[R][kAvx512NV] = *reinterpret_cast<__m512i(*)[R][kAvx512NV]>(v);
  avx512_counts<R, kAvx512NV>(a, {1, words}, panel, words, acc);
  const __m512i kv = _mm512_set1_epi64(k);
  for (int r = 0; r < R; ++r)
    for (int q = 0; q < kAvx512NV; ++q) acc[r][q] = _mm512_sub_epi64(kv, _mm512_slli_epi64(acc[r][q], 1));
}

BNN_TARGET_AVX512 BNN_INLINE void avx512_put_row(const FewRowsOutput& out, int64_t row, int64_t j0, int cols,
                                                 const __m512i* v) {
  if (out.bound) {
    uint64_t bits = 0;
    for (int q = 0; q < kAvx512NV && 8 * q < cols; ++q) {
      const __m256i b32 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(out.bound + j0 + 8 * q));
      const __m512i b = _mm512_cvtepi32_epi64(b32);
      bits |= (uint64_t)_mm512_cmpge_epi64_mask(v[q], b) << (8 * q);
    }
    put_bits(out, row, j0, bits & low_bits(cols));
    return;
  }
  for (int q = 0; q < kAvx512NV && 8 * q < cols; ++q) {
    const int left = cols - 8 * q;
    const __mmask8 lanes = left >= 8 ? (__mmask8)0xff : (__mmask8)((1u << left) - 1u);
    _mm512_mask_cvtepi64_storeu_epi32(out.values + row * out.ld + j0 + 8 * q, lanes, v[q]);
  }
}

#endif  // BNN_X86

}  // namespace

void few_rows_scalar(const uint64_t* a, int rows, int64_t words, int64_t k, const uint64_t* b_panels, int64_t n0,
                     int64_t n1, const FewRowsOutput& out) {
  few_rows_scalar_impl(a, rows, words, k, b_panels, n0, n1, out,
                       [](uint64_t x) { return (int64_t)__builtin_popcountll(x); });
}

#if BNN_X86

__attribute__((target("popcnt"))) void few_rows_scalar_popcnt(const uint64_t* a, int rows, int64_t words, int64_t k,
                                                              const uint64_t* b_panels, int64_t n0, int64_t n1,
                                                              const FewRowsOutput& out) {
  few_rows_scalar_impl(a, rows, words, k, b_panels, n0, n1, out,
                       [](uint64_t x) __attribute__((target("popcnt"))) { return (int64_t)_mm_popcnt_u64(x); });
}

BNN_TARGET_AVX2 void few_rows_avx2(const uint64_t* a, int rows, int64_t words, int64_t k, const uint64_t* b_panels,
                                   int64_t n0, int64_t n1, const FewRowsOutput& out) {
  for (int64_t j0 = n0; j0 < n1; j0 += kAvx2NR) {
    const uint32_t* panel = reinterpret_cast<const uint32_t*>(b_panels + (j0 / kAvx2NR) * words * kAvx2NR);
    const int cols = (int)std::min<int64_t>(kAvx2NR, n1 - j0);
    __m256i sum = _mm256_setzero_si256();
    for (int r = 0; r < rows; ++r) {
      const uint32_t* row = reinterpret_cast<const uint32_t*>(a + r * words);
      const __m256i v = avx2_products(avx2_row_counts<1>(row, panel, words), k);
      if (out.planes)
        sum = _mm256_add_epi32(sum, _mm256_sllv_epi32(v, _mm256_set1_epi32(r)));
      else
        avx2_put_row(out, r, j0, cols, v);
    }
    if (out.planes) avx2_put_row(out, 0, j0, cols, sum);
  }
}

BNN_TARGET_AVX512 void few_rows_avx512(const uint64_t* a, int rows, int64_t words, int64_t k, const uint64_t* b_panels,
                                       int64_t n0, int64_t n1, const FewRowsOutput& out) {
  for (int64_t j0 = n0; j0 < n1; j0 += kAvx512NR) {
    const uint64_t* panel = b_panels + (j0 / kAvx512NR) * words * kAvx512NR;
    const int cols = (int)std::min<int64_t>(kAvx512NR, n1 - j0);
    __m512i sum[kAvx512NV];
    for (int q = 0; q < kAvx512NV; ++q) sum[q] = _mm512_setzero_si512();
    for (int r = 0; r < rows; r += kAvx512FewMR) {
      __m512i v[kAvx512FewMR][kAvx512NV];
      const int chunk = std::min(kAvx512FewMR, rows - r);
      switch (chunk) {
        case 4: avx512_products<4>(a + r * words, words, panel, k, v); break;
        case 3: avx512_products<3>(a + r * words, words, panel, k, v); break;
        case 2: avx512_products<2>(a + r * words, words, panel, k, v); break;
        default: avx512_products<1>(a + r * words, words, panel, k, v); break;
      }
      for (int i = 0; i < chunk; ++i) {
        if (!out.planes) {
          avx512_put_row(out, r + i, j0, cols, v[i]);
          continue;
        }
        const __m512i shift = _mm512_set1_epi64(r + i);
        for (int q = 0; q < kAvx512NV; ++q) sum[q] = _mm512_add_epi64(sum[q], _mm512_sllv_epi64(v[i][q], shift));
      }
    }
    if (out.planes) avx512_put_row(out, 0, j0, cols, sum);
  }
}

#endif  // BNN_X86

}  // namespace detail
}  // namespace bnn_cpu
