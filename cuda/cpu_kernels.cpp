// CPU kernels (see cpu_kernels.h). Each instruction-set variant is compiled with a function-level
// target attribute and picked at run time, so one build serves every x86-64 CPU.
#include "cpu_kernels.h"

#include <algorithm>
#include <cstring>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define BNN_X86 1
#define BNN_TARGET_AVX2 __attribute__((target("avx2,popcnt")))
#define BNN_TARGET_AVX512 __attribute__((target("avx512f,avx512vpopcntdq,popcnt")))
#else
#define BNN_X86 0
#endif

namespace bnn_cpu {
namespace {

// Bits of the last word that lie inside the k real columns; all ones when k is a multiple of 64.
inline uint64_t last_word_mask(int64_t k) {
  const int rem = (int)(k % 64);
  return rem == 0 ? ~0ull : (1ull << rem) - 1ull;
}

inline int64_t words_for(int64_t k) { return (k + 63) / 64; }

// x >= 0 decided on the bits of x, so that no floating-point mode changes it (denormals-are-zero would
// make a negative denormal compare equal to 0): +0.0, -0.0 and every positive number up to +inf are
// +1; negative numbers and NaNs of either sign are -1.
constexpr uint32_t kF32PlusInf = 0x7f800000u, kF32MinusZero = 0x80000000u;
constexpr uint64_t kF64PlusInf = 0x7ff0000000000000ull, kF64MinusZero = 0x8000000000000000ull;

inline bool nonnegative(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u <= kF32PlusInf || u == kF32MinusZero;
}

inline bool nonnegative(double x) {
  uint64_t u;
  std::memcpy(&u, &x, sizeof u);
  return u <= kF64PlusInf || u == kF64MinusZero;
}

// One packed word from up to 64 values; bit i set when x[i] >= 0 (true for 0 and -0.0, false for NaN).
template <typename T>
inline uint64_t pack_word_scalar(const T* x, int64_t n) {
  uint64_t bits = 0;
  for (int64_t i = 0; i < n; ++i) bits |= (uint64_t)nonnegative(x[i]) << i;
  return bits;
}

template <typename T>
void pack_row_scalar(const T* x, int64_t k, uint64_t* out) {
  const int64_t words = words_for(k);
  for (int64_t w = 0; w < words; ++w) out[w] = pack_word_scalar(x + w * 64, std::min<int64_t>(64, k - w * 64));
}

// Threshold form: bit i of each word set when value[i] >= bound[i].
template <typename T>
void pack_ge_row(const T* value, const T* bound, int64_t n, uint64_t* out) {
  const int64_t words = words_for(n);
  for (int64_t w = 0; w < words; ++w) {
    const int64_t count = std::min<int64_t>(64, n - w * 64);
    const T* v = value + w * 64;
    const T* b = bound + w * 64;
    uint64_t bits = 0;
    for (int64_t i = 0; i < count; ++i) bits |= (uint64_t)(v[i] >= b[i]) << i;
    out[w] = bits;
  }
}

#define BNN_INLINE inline __attribute__((always_inline))

// The block kernels below fill popc[r * C + c] = popcount(a[r] XOR b[c]) over the real bits of `words`
// words, for an R x C block of output entries (a, b: R and C row pointers). They are inlined into the
// row kernels (BNN_ROW_KERNEL) of their instruction set.
template <int R, int C>
BNN_INLINE void popc_block_scalar(const uint64_t* const* a, const uint64_t* const* b, int64_t words, uint64_t last_mask,
                       int64_t* popc) {
  int64_t total[R][C] = {};
  for (int64_t w = 0; w < words; ++w) {
    const uint64_t mask = (w == words - 1) ? last_mask : ~0ull;
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) total[r][c] += __builtin_popcountll((a[r][w] ^ b[c][w]) & mask);
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) popc[r * C + c] = total[r][c];
}

#if BNN_X86
// ---- AVX2: vpshufb nibble-lookup popcount -------------------------------------------------------
// Per 256-bit vector and output: xor, 2 and, shift, 2 vpshufb, 2 byte adds. Byte counters hold at most
// 8 per step, so they are summed into 64-bit totals (vpsadbw) every kMaxByteSteps vectors.
constexpr int64_t kMaxByteSteps = 31;  // 31 * 8 = 248 <= 255

BNN_TARGET_AVX2 inline __m256i nibble_popcount(__m256i x, __m256i lut, __m256i low4) {
  const __m256i lo = _mm256_shuffle_epi8(lut, _mm256_and_si256(x, low4));
  const __m256i hi = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(x, 4), low4));
  return _mm256_add_epi8(lo, hi);
}

BNN_TARGET_AVX2 inline int64_t sum_bytes(__m256i counts) {
  const __m256i sums = _mm256_sad_epu8(counts, _mm256_setzero_si256());
  const __m128i half = _mm_add_epi64(_mm256_castsi256_si128(sums), _mm256_extracti128_si256(sums, 1));
  return _mm_cvtsi128_si64(half) + _mm_extract_epi64(half, 1);
}

template <int R, int C>
BNN_TARGET_AVX2 BNN_INLINE void popc_block_avx2(const uint64_t* const* a, const uint64_t* const* b, int64_t words,
                                     uint64_t last_mask, int64_t* popc) {
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                       0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i low4 = _mm256_set1_epi8(0x0f);
  int64_t total[R][C] = {};
  const int64_t vec_end = words & ~int64_t(3);
  for (int64_t w0 = 0; w0 < vec_end; w0 += 4 * kMaxByteSteps) {
    const int64_t w1 = std::min(vec_end, w0 + 4 * kMaxByteSteps);
    __m256i acc[R][C];
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) acc[r][c] = _mm256_setzero_si256();
    for (int64_t w = w0; w < w1; w += 4) {
      __m256i av[R];
      for (int r = 0; r < R; ++r) av[r] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a[r] + w));
      for (int c = 0; c < C; ++c) {
        const __m256i bv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b[c] + w));
        for (int r = 0; r < R; ++r)
          acc[r][c] = _mm256_add_epi8(acc[r][c], nibble_popcount(_mm256_xor_si256(av[r], bv), lut, low4));
      }
    }
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) total[r][c] += sum_bytes(acc[r][c]);
  }
  for (int64_t w = vec_end; w < words; ++w)
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) total[r][c] += _mm_popcnt_u64(a[r][w] ^ b[c][w]);
  // Bits past k were counted above; take them out again (one scalar popcount per output).
  if (last_mask != ~0ull && words > 0)
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) total[r][c] -= _mm_popcnt_u64((a[r][words - 1] ^ b[c][words - 1]) & ~last_mask);
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) popc[r * C + c] = total[r][c];
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

// ---- AVX-512 VPOPCNTDQ ----------------------------------------------------------------------------
template <int R, int C>
BNN_TARGET_AVX512 BNN_INLINE void popc_block_avx512(const uint64_t* const* a, const uint64_t* const* b, int64_t words,
                                         uint64_t last_mask, int64_t* popc) {
  __m512i acc[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_si512();
  for (int64_t w = 0; w < words; w += 8) {
    // The ragged end is read with a masked load: lanes past `words` are zero and never touch memory.
    const __mmask8 lanes = words - w >= 8 ? (__mmask8)0xff : (__mmask8)((1u << (words - w)) - 1u);
    __m512i av[R];
    for (int r = 0; r < R; ++r) av[r] = _mm512_maskz_loadu_epi64(lanes, a[r] + w);
    for (int c = 0; c < C; ++c) {
      const __m512i bv = _mm512_maskz_loadu_epi64(lanes, b[c] + w);
      for (int r = 0; r < R; ++r)
        acc[r][c] = _mm512_add_epi64(acc[r][c], _mm512_popcnt_epi64(_mm512_xor_si512(av[r], bv)));
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) {
      // A plain store and sum rather than _mm512_reduce_add_epi64, whose GCC 12 header trips
      // -Wuninitialized; this runs once per output, outside the hot loop.
      int64_t lanes[8];
      _mm512_storeu_si512(lanes, acc[r][c]);
      int64_t total = 0;
      for (int64_t lane : lanes) total += lane;
      if (last_mask != ~0ull && words > 0)
        total -= _mm_popcnt_u64((a[r][words - 1] ^ b[c][words - 1]) & ~last_mask);
      popc[r * C + c] = total;
    }
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
#endif  // BNN_X86

// A row kernel computes R rows of a against `cols` consecutive rows of b (cols a multiple of C) and
// writes the products to c (row stride ldc). The column loop sits inside the instruction-set-specific
// code so that the block kernel is inlined, not called once per R x C block (that cost a third).
using RowKernel = void (*)(const uint64_t* const* a, const uint64_t* b, int64_t cols, int64_t words, int64_t k,
                           int32_t* c, int64_t ldc);

#define BNN_ROW_KERNEL(NAME, TARGET, BLOCK)                                                              \
  template <int R, int C>                                                                               \
  TARGET void NAME(const uint64_t* const* a, const uint64_t* b, int64_t cols, int64_t words, int64_t k,  \
                   int32_t* c, int64_t ldc) {                                                           \
    const uint64_t last_mask = last_word_mask(k);                                                       \
    for (int64_t q = 0; q < cols; q += C) {                                                             \
      const uint64_t* b_rows[C];                                                                        \
      for (int j = 0; j < C; ++j) b_rows[j] = b + (q + j) * words;                                      \
      int64_t popc[R * C];                                                                              \
      BLOCK<R, C>(a, b_rows, words, last_mask, popc);                                                   \
      for (int r = 0; r < R; ++r)                                                                       \
        for (int j = 0; j < C; ++j) c[r * ldc + q + j] = (int32_t)(k - 2 * popc[r * C + j]);            \
    }                                                                                                   \
  }

BNN_ROW_KERNEL(xnor_rows_scalar, , popc_block_scalar)
#if BNN_X86
BNN_ROW_KERNEL(xnor_rows_avx2, BNN_TARGET_AVX2, popc_block_avx2)
BNN_ROW_KERNEL(xnor_rows_avx512, BNN_TARGET_AVX512, popc_block_avx512)
#endif

// Register-block shape per instruction set, and its row kernels for the full block and the edges.
struct RowKernels {
  int rows, cols;
  RowKernel full, one_row, one_col, single;  // R x C, 1 x C, R x 1, 1 x 1
};

const RowKernels& row_kernels(Isa isa) {
  static const RowKernels scalar{2, 2, xnor_rows_scalar<2, 2>, xnor_rows_scalar<1, 2>, xnor_rows_scalar<2, 1>,
                                 xnor_rows_scalar<1, 1>};
#if BNN_X86
  static const RowKernels avx2{2, 2, xnor_rows_avx2<2, 2>, xnor_rows_avx2<1, 2>, xnor_rows_avx2<2, 1>,
                               xnor_rows_avx2<1, 1>};
  static const RowKernels avx512{4, 4, xnor_rows_avx512<4, 4>, xnor_rows_avx512<1, 4>, xnor_rows_avx512<4, 1>,
                                 xnor_rows_avx512<1, 1>};
  if (isa == Isa::avx512) return avx512;
  if (isa == Isa::avx2) return avx2;
#endif
  (void)isa;
  return scalar;
}

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::avx512: return "avx512vpopcntdq";
    case Isa::avx2: return "avx2";
    default: return "scalar";
  }
}

bool parse_isa(const char* name, Isa* out) {
  for (Isa isa : {Isa::scalar, Isa::avx2, Isa::avx512}) {
    if (std::strcmp(name, isa_name(isa)) == 0) {
      *out = isa;
      return true;
    }
  }
  return false;
}

bool isa_supported(Isa isa) {
#if BNN_X86
  __builtin_cpu_init();
  switch (isa) {
    case Isa::avx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vpopcntdq") &&
             __builtin_cpu_supports("popcnt");
    case Isa::avx2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt");
    default: return true;
  }
#else
  return isa == Isa::scalar;
#endif
}

Isa best_isa() {
  for (Isa isa : {Isa::avx512, Isa::avx2})
    if (isa_supported(isa)) return isa;
  return Isa::scalar;
}

void pack_rows(Isa isa, const float* x, int64_t rows, int64_t k, uint64_t* out) {
  auto pack_row = pack_row_scalar<float>;
#if BNN_X86
  if (isa == Isa::avx512) pack_row = pack_row_avx512;
  if (isa == Isa::avx2) pack_row = pack_row_avx2;
#endif
  const int64_t words = words_for(k);
  for (int64_t r = 0; r < rows; ++r) pack_row(x + r * k, k, out + r * words);
}

void pack_rows_f64(const double* x, int64_t rows, int64_t k, uint64_t* out) {
  const int64_t words = words_for(k);
  for (int64_t r = 0; r < rows; ++r) pack_row_scalar(x + r * k, k, out + r * words);
}

void pack_ge_rows_i32(const int32_t* value, const int32_t* bound, int64_t rows, int64_t n, uint64_t* out) {
  const int64_t words = words_for(n);
  for (int64_t r = 0; r < rows; ++r) pack_ge_row(value + r * n, bound, n, out + r * words);
}

void pack_ge_rows_f32(const float* value, const float* bound, int64_t rows, int64_t n, uint64_t* out) {
  const int64_t words = words_for(n);
  for (int64_t r = 0; r < rows; ++r) pack_ge_row(value + r * n, bound, n, out + r * words);
}

void xnor_block(Isa isa, const uint64_t* a, const uint64_t* b, int64_t words, int64_t k, int64_t m0, int64_t m1,
                int64_t n0, int64_t n1, int32_t* c, int64_t ldc) {
  const RowKernels& rk = row_kernels(isa);
  const int64_t full_cols = (n1 - n0) / rk.cols * rk.cols, n_edge = n0 + full_cols, edge_cols = n1 - n_edge;
  const uint64_t* a_rows[4];
  for (int64_t i = m0; i < m1; i += rk.rows) {
    const int rows = (int)std::min<int64_t>(rk.rows, m1 - i);
    for (int r = 0; r < rows; ++r) a_rows[r] = a + (i + r) * words;
    if (rows == rk.rows) {
      rk.full(a_rows, b + n0 * words, full_cols, words, k, c + i * ldc + n0, ldc);
      rk.one_col(a_rows, b + n_edge * words, edge_cols, words, k, c + i * ldc + n_edge, ldc);
    } else {  // the last rows of a ragged m, one at a time
      for (int r = 0; r < rows; ++r) {
        rk.one_row(a_rows + r, b + n0 * words, full_cols, words, k, c + (i + r) * ldc + n0, ldc);
        rk.single(a_rows + r, b + n_edge * words, edge_cols, words, k, c + (i + r) * ldc + n_edge, ldc);
      }
    }
  }
}

void float_gemm_block(const float* a, const float* b, int64_t k, int64_t m0, int64_t m1, int64_t n0, int64_t n1,
                      float* c, int64_t ldc) {
  constexpr int kBlock = 4;
  for (int64_t i = m0; i < m1; i += kBlock) {
    const int rows = (int)std::min<int64_t>(kBlock, m1 - i);
    for (int64_t j = n0; j < n1; j += kBlock) {
      const int cols = (int)std::min<int64_t>(kBlock, n1 - j);
      float sum[kBlock][kBlock] = {};
      if (rows == kBlock && cols == kBlock) {
        for (int64_t p = 0; p < k; ++p)
          for (int r = 0; r < kBlock; ++r)
            for (int q = 0; q < kBlock; ++q) sum[r][q] += a[(i + r) * k + p] * b[(j + q) * k + p];
      } else {
        for (int r = 0; r < rows; ++r)
          for (int q = 0; q < cols; ++q)
            for (int64_t p = 0; p < k; ++p) sum[r][q] += a[(i + r) * k + p] * b[(j + q) * k + p];
      }
      for (int r = 0; r < rows; ++r)
        for (int q = 0; q < cols; ++q) c[(i + r) * ldc + j + q] = sum[r][q];
    }
  }
}

}  // namespace bnn_cpu
