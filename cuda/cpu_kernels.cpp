// CPU kernels (see cpu_kernels.h). Each instruction-set variant is compiled with a function-level
// target attribute and picked at run time, so one build serves every x86-64 CPU.
#include "cpu_kernels.h"

#include <algorithm>
#include <climits>
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

// ---- The XNOR GEMM on packed panels ------------------------------------------------------------------
// The caller copies a's rows into panels of MR rows (pack_panels), word by word: panel[w * width + i] is word
// w of the panel's row i; b's rows go into panels of NR rows in the layout of the kernel (pack_b_panels: the
// same, or for AVX2 32-bit half-words). Bits past k are cleared and missing rows are zero, so the
// micro-kernels below never mask: a zero bit XOR a zero bit counts nothing. A micro-kernel computes one
// MR x NR block of c from one a panel and one b panel, its counts in registers for the whole of k (no
// partial sums in memory, no horizontal reductions): in the vector kernels one vector lane is one column of
// c, so the b panel's words load straight into the lanes and each word (or half-word) of a is broadcast.
#define BNN_INLINE inline __attribute__((always_inline))

// c[r * ldc + j] = k - 2 * popcount for the rows < rows and columns < cols of the block that lie in c.
template <int MR, int NR>
BNN_INLINE void store_block(const int64_t (&popc)[MR][NR], int64_t k, int rows, int cols, int32_t* c, int64_t ldc) {
  for (int r = 0; r < rows; ++r)
    for (int j = 0; j < cols; ++j) c[r * ldc + j] = (int32_t)(k - 2 * popc[r][j]);
}

// Scalar: MR x NR 64-bit counters in general registers, one POPCNT per word and output.
template <int MR, int NR, typename Popcount>
BNN_INLINE void micro_scalar(const uint64_t* ap, const uint64_t* bp, int64_t words, int64_t k, int rows, int cols,
                             int32_t* c, int64_t ldc, Popcount popcount) {
  int64_t popc[MR][NR] = {};
  for (int64_t w = 0; w < words; ++w) {
    uint64_t bw[NR];
    for (int j = 0; j < NR; ++j) bw[j] = bp[w * NR + j];
    for (int r = 0; r < MR; ++r) {
      const uint64_t aw = ap[w * MR + r];
      for (int j = 0; j < NR; ++j) popc[r][j] += popcount(aw ^ bw[j]);
    }
  }
  store_block<MR, NR>(popc, k, rows, cols, c, ldc);
}

constexpr int kScalarMR = 2, kScalarNR = 4;  // 8 counters + 4 b words + 2 a words in 16 registers

void micro_scalar_portable(const uint64_t* ap, const uint64_t* bp, int64_t words, int64_t k, int rows, int cols,
                           int32_t* c, int64_t ldc) {
  micro_scalar<kScalarMR, kScalarNR>(ap, bp, words, k, rows, cols, c, ldc,
                                     [](uint64_t x) { return (int64_t)__builtin_popcountll(x); });
}

#if BNN_X86
// ---- AVX2 ---------------------------------------------------------------------------------------------
// Byte counters take at most 8 per step (the popcount of one byte), so 31 steps fit: 31 * 8 = 248 <= 255.
constexpr int64_t kMaxByteSteps = 31;

// The popcount of each byte of x by nibble lookup (vpshufb): 2 and, shift, 2 vpshufb, add.
BNN_TARGET_AVX2 inline __m256i nibble_popcount(__m256i x, __m256i lut, __m256i low4) {
  const __m256i lo = _mm256_shuffle_epi8(lut, _mm256_and_si256(x, low4));
  const __m256i hi = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(x, 4), low4));
  return _mm256_add_epi8(lo, hi);
}

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

// ---- AVX-512 VPOPCNTDQ ----------------------------------------------------------------------------
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
// Scalar with the POPCNT instruction (every x86-64 CPU of the last fifteen years; the portable version's
// __builtin_popcountll is a bit-twiddling sequence when the build targets plain x86-64).
__attribute__((target("popcnt"))) void micro_scalar_popcnt(const uint64_t* ap, const uint64_t* bp, int64_t words,
                                                           int64_t k, int rows, int cols, int32_t* c, int64_t ldc) {
  micro_scalar<kScalarMR, kScalarNR>(ap, bp, words, k, rows, cols, c, ldc,
                                     [](uint64_t x) __attribute__((target("popcnt"))) {
                                       return (int64_t)_mm_popcnt_u64(x);
                                     });
}

// AVX2: Harley-Seal (Mula, Kurz, Lemire) per row of the block. A vector holds 32 bits of k for each of the
// block's 8 columns, so one carry-save adder tree serves 8 outputs at once: 32-bit lanes rather than 64 halve
// the per-output cost of emptying the tree at the end of k, a sizeable part of the work at k = 4096.
// b's panels for this kernel hold 32-bit half-words (pack_b_panels): half h of word w of the panel's row i is
// uint32 [(w * 2 + h) * 8 + i], one vector per half-word; a's panels are the usual 64-bit interleave, whose
// half-words are broadcast from memory (vbroadcastss: a load, no ALU work).
constexpr int kAvx2MR = 4, kAvx2NR = 8;

BNN_TARGET_AVX2 BNN_INLINE void carry_save(__m256i& high, __m256i& low, __m256i a, __m256i b, __m256i c) {
  const __m256i u = _mm256_xor_si256(a, b);
  high = _mm256_or_si256(_mm256_and_si256(a, b), _mm256_and_si256(u, c));
  low = _mm256_xor_si256(u, c);
}

// The sums of each 32-bit lane's four bytes, each byte times `weight` (at most 255 * 2 * weight per 16-bit pair).
BNN_TARGET_AVX2 BNN_INLINE __m256i lane_sums_32(__m256i bytes, int8_t weight) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(bytes, _mm256_set1_epi8(weight)), _mm256_set1_epi16(1));
}

// Half-word q of the row whose half-words start at a (half h of word w at a[w * 2 * kAvx2MR + h]), broadcast,
// XOR half-word q of the panel's 8 columns, which start at b.
BNN_TARGET_AVX2 BNN_INLINE __m256i half_word_xor(const uint32_t* a, const uint32_t* b, int64_t q) {
  const float* a_half = reinterpret_cast<const float*>(a + (q >> 1) * 2 * kAvx2MR + (q & 1));
  return _mm256_xor_si256(_mm256_castps_si256(_mm256_broadcast_ss(a_half)),
                          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + q * kAvx2NR)));
}

// Half-words 0..7 from a and b into the tree's ones, twos and fours; out: the eights they carry.
BNN_TARGET_AVX2 BNN_INLINE void add_eight(__m256i& eights_out, __m256i& ones, __m256i& twos, __m256i& fours,
                                          const uint32_t* a, const uint32_t* b) {
  __m256i twos_a, twos_b, fours_a, fours_b;
  carry_save(twos_a, ones, half_word_xor(a, b, 0), half_word_xor(a, b, 1), ones);
  carry_save(twos_b, ones, half_word_xor(a, b, 2), half_word_xor(a, b, 3), ones);
  carry_save(fours_a, twos, twos_a, twos_b, twos);
  carry_save(twos_a, ones, half_word_xor(a, b, 4), half_word_xor(a, b, 5), ones);
  carry_save(twos_b, ones, half_word_xor(a, b, 6), half_word_xor(a, b, 7), ones);
  carry_save(fours_b, twos, twos_a, twos_b, twos);
  carry_save(eights_out, fours, fours_a, fours_b, fours);
}

BNN_TARGET_AVX2 void micro_avx2(const uint64_t* ap, const uint64_t* bp, int64_t words, int64_t k, int rows, int cols,
                                int32_t* c, int64_t ldc) {
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                       0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i low4 = _mm256_set1_epi8(0x0f);
  // Emptying the tree costs about as much as counting 4 half-words by lookup: below 32 half-words (k < 1024)
  // plain lookup is cheaper.
  const int64_t halves = 2 * words, blocks = halves >= 32 ? halves / 16 : 0;
  const uint32_t* b32 = reinterpret_cast<const uint32_t*>(bp);
  for (int r = 0; r < rows; ++r) {
    const uint32_t* a32 = reinterpret_cast<const uint32_t*>(ap + r);
    // The tree's state: bit planes of weight 1, 2, 4 and 8 per bit position. Every 16 half-words its
    // sixteens are counted by nibble lookup into bytes (at most 8 per byte each time), which are summed
    // into 32-bit lanes every kMaxByteSteps blocks, before a byte could overflow.
    __m256i ones = _mm256_setzero_si256(), twos = ones, fours = ones, eights = ones, sixteens_bytes = ones, total = ones;
    int64_t pending = 0;  // blocks counted into sixteens_bytes
    for (int64_t block = 0; block < blocks; ++block) {
      const uint32_t* a_block = a32 + block * 16 * kAvx2MR;  // 8 words of a's row
      const uint32_t* b_block = b32 + block * 16 * kAvx2NR;  // 16 half-word vectors of b's panel
      __m256i eights_a, eights_b, sixteens;
      add_eight(eights_a, ones, twos, fours, a_block, b_block);
      add_eight(eights_b, ones, twos, fours, a_block + 8 * kAvx2MR, b_block + 8 * kAvx2NR);
      carry_save(sixteens, eights, eights_a, eights_b, eights);
      sixteens_bytes = _mm256_add_epi8(sixteens_bytes, nibble_popcount(sixteens, lut, low4));
      if (++pending == kMaxByteSteps) {
        pending = 0;
        total = _mm256_add_epi32(total, lane_sums_32(sixteens_bytes, 16));
        sixteens_bytes = _mm256_setzero_si256();
      }
    }
    // What is left in the tree (at most 8 + 4 + 2 + 1 = 15 per bit position, 120 per byte), then the last
    // half-words by plain lookup (fewer than 16 after the tree, at most 31 without it; at most 8 per byte
    // each): at most 248 per byte.
    __m256i bytes = _mm256_setzero_si256();
    if (blocks > 0)
      bytes = _mm256_add_epi8(
          _mm256_add_epi8(_mm256_slli_epi16(nibble_popcount(eights, lut, low4), 3),
                          _mm256_slli_epi16(nibble_popcount(fours, lut, low4), 2)),
          _mm256_add_epi8(_mm256_slli_epi16(nibble_popcount(twos, lut, low4), 1), nibble_popcount(ones, lut, low4)));
    for (int64_t w = 8 * blocks; w < words; ++w) {
      const uint32_t* a_word = a32 + w * 2 * kAvx2MR;
      const uint32_t* b_word = b32 + w * 2 * kAvx2NR;
      bytes = _mm256_add_epi8(bytes, _mm256_add_epi8(nibble_popcount(half_word_xor(a_word, b_word, 0), lut, low4),
                                                     nibble_popcount(half_word_xor(a_word, b_word, 1), lut, low4)));
    }
    total = _mm256_add_epi32(total, _mm256_add_epi32(lane_sums_32(sixteens_bytes, 16), lane_sums_32(bytes, 1)));
    // k - 2 * popcount; k and the count fit in int32 (the caller refuses larger k).
    const __m256i out = _mm256_sub_epi32(_mm256_set1_epi32((int32_t)k), _mm256_slli_epi32(total, 1));
    if (cols == kAvx2NR) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(c + r * ldc), out);
    } else {
      int32_t lanes[kAvx2NR];
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(lanes), out);
      for (int j = 0; j < cols; ++j) c[r * ldc + j] = lanes[j];
    }
  }
}

// b's panels for micro_avx2: 32-bit half-words, see above.
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

// AVX-512 VPOPCNTDQ: eight columns per vector, xor + vpopcntq + add per word, 64-bit counters.
// MR x NV = 24 accumulators, NV b vectors and a broadcast word of a in the 32 zmm registers. 32 columns
// per panel rather than 24 (8 x 3): channel counts are powers of two, so no panel is part padding (a
// 128-wide conv layer computed 144 columns), and the CIFAR-10 ConvNet ran 12% faster.
constexpr int kAvx512MR = 6, kAvx512NV = 4, kAvx512NR = 8 * kAvx512NV;

template <int MR, int NV>
BNN_TARGET_AVX512 BNN_INLINE void micro_avx512(const uint64_t* ap, const uint64_t* bp, int64_t words, int64_t k,
                                               int rows, int cols, int32_t* c, int64_t ldc) {
  constexpr int NR = 8 * NV;
  __m512i acc[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_si512();
  for (int64_t w = 0; w < words; ++w) {
    __m512i bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = _mm512_loadu_si512(bp + w * NR + 8 * v);
    for (int r = 0; r < MR; ++r) {
      const __m512i av = _mm512_set1_epi64((int64_t)ap[w * MR + r]);
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_add_epi64(acc[r][v], _mm512_popcnt_epi64(_mm512_xor_si512(av, bv[v])));
    }
  }
  // k - 2 * popcount in 64-bit lanes, narrowed to int32 on the store; lanes past cols are not written.
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
#endif  // BNN_X86

// ---- Convolution epilogue: border correction, max-pool, direction and threshold in one pass ----------
// For one output pixel: v[ch] = max over the pool window of (d - correction), times direction[ch], into
// `scratch` (c entries); then bit ch = v[ch] >= bound[ch]. Inlined into one function per instruction set,
// so that the channel loops are compiled (and vectorized) for it.
template <typename PackGe>
BNN_INLINE void conv_threshold_pixel(const ConvThreshold& t, int64_t image, int64_t i2, int64_t j2, int32_t* scratch,
                                     uint64_t* out, PackGe pack_ge) {
  const int64_t c = t.channels;
  for (int64_t ch = 0; ch < c; ++ch) scratch[ch] = INT32_MIN;
  for (int di = 0; di < t.pool; ++di)
    for (int dj = 0; dj < t.pool; ++dj) {
      const int64_t pixel = (i2 * t.pool + di) * t.width + j2 * t.pool + dj;
      const int32_t* d = t.products + (image * t.height * t.width + pixel) * c;
      if (t.correction) {
        const int32_t* corr = t.correction + pixel * c;
        for (int64_t ch = 0; ch < c; ++ch) scratch[ch] = std::max(scratch[ch], d[ch] - corr[ch]);
      } else {
        for (int64_t ch = 0; ch < c; ++ch) scratch[ch] = std::max(scratch[ch], d[ch]);
      }
    }
  if (t.direction)
    for (int64_t ch = 0; ch < c; ++ch) scratch[ch] *= t.direction[ch];
  pack_ge(scratch, t.bound, c, out);
}

template <typename PackGe>
BNN_INLINE void conv_threshold_rows_impl(const ConvThreshold& t, int64_t r0, int64_t r1, int32_t* scratch,
                                         uint64_t* out, PackGe pack_ge) {
  const int64_t h2 = t.height / t.pool, w2 = t.width / t.pool, words = words_for(t.channels);
  for (int64_t r = r0; r < r1; ++r)  // r: an output row, image * h2 + i2
    for (int64_t j2 = 0; j2 < w2; ++j2)
      conv_threshold_pixel(t, r / h2, r % h2, j2, scratch, out + (r * w2 + j2) * words, pack_ge);
}

void conv_threshold_rows_portable(const ConvThreshold& t, int64_t r0, int64_t r1, int32_t* scratch, uint64_t* out) {
  conv_threshold_rows_impl(t, r0, r1, scratch, out, pack_ge_row<int32_t>);
}

#if BNN_X86
BNN_TARGET_AVX2 void conv_threshold_rows_avx2(const ConvThreshold& t, int64_t r0, int64_t r1, int32_t* scratch,
                                              uint64_t* out) {
  conv_threshold_rows_impl(t, r0, r1, scratch, out, pack_ge_row_i32_avx2);
}

BNN_TARGET_AVX512 void conv_threshold_rows_avx512(const ConvThreshold& t, int64_t r0, int64_t r1, int32_t* scratch,
                                                  uint64_t* out) {
  conv_threshold_rows_impl(t, r0, r1, scratch, out, pack_ge_row_i32_avx512);
}
#endif

using MicroKernel = void (*)(const uint64_t* ap, const uint64_t* bp, int64_t words, int64_t k, int rows, int cols,
                             int32_t* c, int64_t ldc);

// pack_panels' signature without the width, which the kernel's shape fixes.
using PanelPacker = void (*)(const uint64_t* src, int64_t rows, int64_t words, int64_t k, int64_t p0, int64_t p1,
                             uint64_t* out);

template <int Width>
void pack_word_panels(const uint64_t* src, int64_t rows, int64_t words, int64_t k, int64_t p0, int64_t p1,
                      uint64_t* out) {
  pack_panels(src, rows, words, k, Width, p0, p1, out);
}

struct PanelKernel {
  PanelShape shape;
  MicroKernel micro;
  PanelPacker pack_b;
  // Which panel stays in the L1 cache while the others pass: b's (each b panel meets every a panel of the
  // tile in turn) or a's (each a panel meets the tile's few b panels). The AVX2 kernel sweeps its b panel
  // once per row of a and ran faster with a's panel resident; the AVX-512 one showed no difference.
  bool a_panel_resident;
};

PanelKernel panel_kernel(Isa isa) {
#if BNN_X86
  if (isa == Isa::avx512) return {{kAvx512MR, kAvx512NR}, micro_avx512_full, pack_word_panels<kAvx512NR>, false};
  if (isa == Isa::avx2) return {{kAvx2MR, kAvx2NR}, micro_avx2, pack_half_word_panels, true};
  static const bool has_popcnt = (__builtin_cpu_init(), __builtin_cpu_supports("popcnt"));
  if (has_popcnt) return {{kScalarMR, kScalarNR}, micro_scalar_popcnt, pack_word_panels<kScalarNR>, false};
#endif
  (void)isa;
  return {{kScalarMR, kScalarNR}, micro_scalar_portable, pack_word_panels<kScalarNR>, false};
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

void pack_ge_rows_i32(Isa isa, const int32_t* value, const int32_t* bound, int64_t rows, int64_t n, uint64_t* out) {
  auto pack_row = pack_ge_row<int32_t>;
#if BNN_X86
  if (isa == Isa::avx512) pack_row = pack_ge_row_i32_avx512;
  if (isa == Isa::avx2) pack_row = pack_ge_row_i32_avx2;
#endif
  (void)isa;
  const int64_t words = words_for(n);
  for (int64_t r = 0; r < rows; ++r) pack_row(value + r * n, bound, n, out + r * words);
}

void pack_ge_rows_f32(const float* value, const float* bound, int64_t rows, int64_t n, uint64_t* out) {
  const int64_t words = words_for(n);
  for (int64_t r = 0; r < rows; ++r) pack_ge_row(value + r * n, bound, n, out + r * words);
}

PanelShape panel_shape(Isa isa) { return panel_kernel(isa).shape; }

void pack_panels(const uint64_t* src, int64_t rows, int64_t words, int64_t k, int width, int64_t p0, int64_t p1,
                 uint64_t* out) {
  const uint64_t last_mask = last_word_mask(k);
  for (int64_t p = p0; p < p1; ++p) {
    uint64_t* panel = out + p * words * width;
    for (int i = 0; i < width; ++i) {
      const int64_t row = p * width + i;
      if (row >= rows) {
        for (int64_t w = 0; w < words; ++w) panel[w * width + i] = 0;
        continue;
      }
      const uint64_t* s = src + row * words;
      for (int64_t w = 0; w < words; ++w) panel[w * width + i] = s[w];
      if (words > 0) panel[(words - 1) * width + i] &= last_mask;
    }
  }
}

void pack_conv_panels(const ConvInput& x, int width, int64_t p0, int64_t p1, uint64_t* out) {
  const int64_t rows = x.images * x.height * x.width, taps = (int64_t)x.kernel * x.kernel;
  const int64_t words = taps * x.channel_words;
  for (int64_t p = p0; p < p1; ++p) {
    uint64_t* panel = out + p * words * width;
    for (int i = 0; i < width; ++i) {
      const int64_t row = p * width + i;
      const int64_t image = row / (x.height * x.width), pixel = row % (x.height * x.width);
      const int64_t y = pixel / x.width, xx = pixel % x.width;
      for (int64_t t = 0; t < taps; ++t) {
        const int64_t yy = y + t / x.kernel - x.padding, xt = xx + t % x.kernel - x.padding;
        const bool inside = row < rows && yy >= 0 && yy < x.height && xt >= 0 && xt < x.width;
        const uint64_t* src = inside ? x.words + ((image * x.height + yy) * x.width + xt) * x.channel_words : nullptr;
        uint64_t* dst = panel + t * x.channel_words * width + i;
        for (int64_t j = 0; j < x.channel_words; ++j) dst[j * width] = inside ? src[j] : 0;
      }
    }
  }
}

PanelShape xnor_tile(Isa isa, int64_t words) {
  const PanelShape panel = panel_shape(isa);
  // a's panels: about 256 KB (a quarter of a current L2 cache); b's: four panels, narrow so that there are many
  // more tiles than threads and a ragged last one unbalances little (wider ones gained nothing measurable at
  // 10000 x 4096 x 4096). One panel stays in the L1 cache while the others pass it (xnor_panels).
  const int64_t row_bytes = std::max<int64_t>(words * 8, 1);
  return {(int)(std::clamp<int64_t>((256 * 1024 / row_bytes) / panel.rows, 1, 64) * panel.rows), 4 * panel.cols};
}

void pack_b_panels(Isa isa, const uint64_t* src, int64_t rows, int64_t words, int64_t k, int64_t p0, int64_t p1,
                   uint64_t* out) {
  panel_kernel(isa).pack_b(src, rows, words, k, p0, p1, out);
}

void xnor_panels(Isa isa, const uint64_t* a_panels, const uint64_t* b_panels, int64_t words, int64_t k, int64_t m0,
                 int64_t m1, int64_t n0, int64_t n1, int32_t* c, int64_t ldc) {
  const PanelKernel kernel = panel_kernel(isa);
  const int mr = kernel.shape.rows, nr = kernel.shape.cols;
  auto block = [&](int64_t i, int64_t j) {
    kernel.micro(a_panels + (i / mr) * words * mr, b_panels + (j / nr) * words * nr, words, k,
                 (int)std::min<int64_t>(mr, m1 - i), (int)std::min<int64_t>(nr, n1 - j), c + i * ldc + j, ldc);
  };
  if (kernel.a_panel_resident) {
    for (int64_t i = m0; i < m1; i += mr)
      for (int64_t j = n0; j < n1; j += nr) block(i, j);
  } else {
    for (int64_t j = n0; j < n1; j += nr)
      for (int64_t i = m0; i < m1; i += mr) block(i, j);
  }
}

void conv_threshold_rows(Isa isa, const ConvThreshold& t, int64_t r0, int64_t r1, int32_t* scratch, uint64_t* out) {
#if BNN_X86
  if (isa == Isa::avx512) return conv_threshold_rows_avx512(t, r0, r1, scratch, out);
  if (isa == Isa::avx2) return conv_threshold_rows_avx2(t, r0, r1, scratch, out);
#endif
  (void)isa;
  conv_threshold_rows_portable(t, r0, r1, scratch, out);
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
