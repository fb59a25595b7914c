// The few-row XNOR kernels (xnor_few_rows in xnor_kernels.h), one per instruction set, each with its own target
// attribute; the tables of xnor_{scalar,avx2,avx512}.cpp name them. a's rows are read as they are (row-major),
// so a batch of one image is not copied into panels; each panel of b (the layout of the many-row kernels, so one
// copy of the weights serves both) is read once for all the rows, and its outputs leave the registers through
// the epilogue: int32 values, or the threshold compared and packed into the next layer's bits. And, beside them,
// the nibble-table first layer on 8-bit inputs (nibble_tables, nibble_row), with the same epilogue.
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

// ---- The nibble-table first layer: see nibble_row in xnor_kernels.h ---------------------------------------------

// Octets of inputs per pass of 16-bit sums: each pair of octets adds at most 4 * 60 = 240 to a lane, and 256 pairs
// make 61,440 <= 65,535.
constexpr int64_t kNibbleOctetsPerPass = 512;

BNN_TARGET_AVX2 BNN_INLINE __m256i lane_table(const uint8_t* sixteen) {
  return _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sixteen)));
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

// The nibble-table first layer (nibble_row in xnor_kernels.h).
BNN_TARGET_AVX2 int64_t nibble_tables_avx2(const uint8_t* x, int64_t k, uint8_t* tables) {
  // Entry m of a group's tables sums its inputs i with bit i of m set: vpshufb picks byte i of the group's nibbles
  // through pick[i] where bit i of m is set, and zero (index 0x80) elsewhere.
  const __m256i entry = _mm256_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
                                         0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  __m256i pick[4];
  for (int i = 0; i < 4; ++i) {
    const __m256i bit = _mm256_set1_epi8((char)(1 << i));
    const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(entry, bit), bit);
    pick[i] = _mm256_blendv_epi8(_mm256_set1_epi8((char)0x80), _mm256_set1_epi8((char)i), set);
  }
  const __m256i low4 = _mm256_set1_epi8(0x0f);
  int64_t total = 0;
  for (int64_t g = 0; g < nibble_inputs(k) / 4; ++g) {
    uint32_t group = 0;  // inputs 4g .. 4g + 3, zero past k
    if (4 * g + 4 <= k) {
      std::memcpy(&group, x + 4 * g, sizeof group);
    } else {
      for (int64_t i = 4 * g; i < k; ++i) group |= (uint32_t)x[i] << (8 * (i - 4 * g));
    }
    total += (group & 0xff) + ((group >> 8) & 0xff) + ((group >> 16) & 0xff) + (group >> 24);
    const __m256i bytes = _mm256_set1_epi32((int32_t)group);
    // The low nibbles in the low lane (the first 16 entries), the high nibbles in the high lane.
    const __m256i nibbles = _mm256_blend_epi32(_mm256_and_si256(bytes, low4),
                                               _mm256_and_si256(_mm256_srli_epi16(bytes, 4), low4), 0xf0);
    __m256i sums = _mm256_setzero_si256();
    for (int i = 0; i < 4; ++i) sums = _mm256_add_epi8(sums, _mm256_shuffle_epi8(nibbles, pick[i]));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(tables + 32 * g), sums);
  }
  return total;
}

BNN_TARGET_AVX2 void nibble_row_avx2(const uint8_t* tables, int64_t k, const uint8_t* weights, int64_t n0, int64_t n1,
                                     const int32_t* offset, int32_t bias, const FewRowsOutput& out) {
  const int64_t octets = nibble_inputs(k) / 8;  // even: kNibbleInputs is 16
  const __m256i low4 = _mm256_set1_epi8(0x0f);
  for (int64_t j0 = n0; j0 < n1; j0 += kNibbleOutputs) {
    const uint8_t* block = weights + (j0 / kNibbleOutputs) * octets * kNibbleOutputs;
    // 32-bit sums of the low and the high nibbles, outputs 8v .. 8v + 7 of the block in vector v.
    __m256i lows[4], highs[4];
    for (int v = 0; v < 4; ++v) lows[v] = highs[v] = _mm256_setzero_si256();
    for (int64_t q0 = 0; q0 < octets; q0 += kNibbleOctetsPerPass) {
      const int64_t q1 = std::min(octets, q0 + kNibbleOctetsPerPass);
      __m256i lows16[2], highs16[2];  // outputs 0-15 and 16-31
      lows16[0] = lows16[1] = highs16[0] = highs16[1] = _mm256_setzero_si256();
      for (int64_t q = q0; q < q1; q += 2) {
        __m256i lows8 = _mm256_setzero_si256(), highs8 = lows8;  // 4 groups: at most 240 per byte
        for (int h = 0; h < 2; ++h) {
          const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(block + (q + h) * kNibbleOutputs));
          const __m256i first = _mm256_and_si256(w, low4), second = _mm256_and_si256(_mm256_srli_epi16(w, 4), low4);
          const uint8_t* t = tables + (q + h) * 64;  // groups 2(q + h) (bits 0-3) and 2(q + h) + 1 (bits 4-7)
          lows8 = _mm256_add_epi8(lows8, _mm256_add_epi8(_mm256_shuffle_epi8(lane_table(t), first),
                                                         _mm256_shuffle_epi8(lane_table(t + 32), second)));
          highs8 = _mm256_add_epi8(highs8, _mm256_add_epi8(_mm256_shuffle_epi8(lane_table(t + 16), first),
                                                           _mm256_shuffle_epi8(lane_table(t + 48), second)));
        }
        lows16[0] = _mm256_add_epi16(lows16[0], _mm256_cvtepu8_epi16(_mm256_castsi256_si128(lows8)));
        lows16[1] = _mm256_add_epi16(lows16[1], _mm256_cvtepu8_epi16(_mm256_extracti128_si256(lows8, 1)));
        highs16[0] = _mm256_add_epi16(highs16[0], _mm256_cvtepu8_epi16(_mm256_castsi256_si128(highs8)));
        highs16[1] = _mm256_add_epi16(highs16[1], _mm256_cvtepu8_epi16(_mm256_extracti128_si256(highs8, 1)));
      }
      for (int half = 0; half < 2; ++half) {
        lows[2 * half] = _mm256_add_epi32(lows[2 * half], _mm256_cvtepu16_epi32(_mm256_castsi256_si128(lows16[half])));
        lows[2 * half + 1] =
            _mm256_add_epi32(lows[2 * half + 1], _mm256_cvtepu16_epi32(_mm256_extracti128_si256(lows16[half], 1)));
        highs[2 * half] =
            _mm256_add_epi32(highs[2 * half], _mm256_cvtepu16_epi32(_mm256_castsi256_si128(highs16[half])));
        highs[2 * half + 1] =
            _mm256_add_epi32(highs[2 * half + 1], _mm256_cvtepu16_epi32(_mm256_extracti128_si256(highs16[half], 1)));
      }
    }
    // value = 4 * (16 * highs + lows) + offset + bias, wrapping as int32 arithmetic in vectors does.
    const __m256i b = _mm256_set1_epi32(bias);
    for (int v = 0; v < 4 && j0 + 8 * v < n1; ++v) {
      const __m256i s = _mm256_add_epi32(_mm256_slli_epi32(highs[v], 6), _mm256_slli_epi32(lows[v], 2));
      const __m256i o = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(offset + j0 + 8 * v));
      const int cols = (int)std::min<int64_t>(8, n1 - j0 - 8 * v);
      avx2_put_row(out, 0, j0 + 8 * v, cols, _mm256_add_epi32(s, _mm256_add_epi32(o, b)));
    }
  }
}

// The float first layer's word (float_sign_word in xnor_kernels.h): a lane's product is x or -x as blendv picks by
// the lane's top bit, where vpsllv moved its output's sign bit (the bits below it are ignored): three instructions
// per 8 outputs and input, the sums in input order.
BNN_TARGET_AVX2 void float_sign_word_avx2(const float* x, int64_t n, int64_t k, const uint64_t* negative,
                                          int64_t words, int64_t wd, float* y, int64_t ldy) {
  __m256i to_top[4];  // lane l of vector v (output 8v + l) takes bit 8(v % 4) + l of its 32-bit half to bit 31
  for (int r = 0; r < 4; ++r)
    to_top[r] = _mm256_sub_epi32(_mm256_set1_epi32(31 - 8 * r), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  const __m256 sign = _mm256_castsi256_ps(_mm256_set1_epi32(INT32_MIN));
  for (int64_t i = 0; i < n; ++i) {
    const float* xi = x + i * k;
    __m256 acc[8];
    for (int v = 0; v < 8; ++v) acc[v] = _mm256_setzero_ps();
    for (int64_t p = 0; p < k; ++p) {
      const uint64_t w = negative[p * words + wd];
      const __m256i low = _mm256_set1_epi32((int32_t)(uint32_t)w);
      const __m256i high = _mm256_set1_epi32((int32_t)(uint32_t)(w >> 32));
      const __m256 a = _mm256_broadcast_ss(xi + p), negated = _mm256_xor_ps(a, sign);
      for (int v = 0; v < 8; ++v) {
        const __m256i top = _mm256_sllv_epi32(v < 4 ? low : high, to_top[v % 4]);
        acc[v] = _mm256_add_ps(acc[v], _mm256_blendv_ps(a, negated, _mm256_castsi256_ps(top)));
      }
    }
    for (int v = 0; v < 8; ++v) _mm256_storeu_ps(y + i * ldy + 64 * wd + 8 * v, acc[v]);
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
