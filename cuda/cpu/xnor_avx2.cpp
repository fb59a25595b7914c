// The AVX2 CPU XNOR kernels: a Harley-Seal popcount over 32-bit half-words, and packing 8 lanes at a time.
// Compiled for any x86-64 target: each function carries its own target attribute (BNN_TARGET_AVX2) and runs
// only where kernels_for picks this table.
#include "xnor_isa.h"

#if BNN_X86
#include <immintrin.h>

namespace bnn_cpu {
namespace detail {
namespace {

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

BNN_TARGET_AVX2 void conv_threshold_rows_avx2(const ConvThreshold& t, int64_t r0, int64_t r1, int32_t* scratch,
                                              uint64_t* out) {
  conv_threshold_rows_impl(t, r0, r1, scratch, out, pack_ge_row_i32_avx2);
}

constexpr IsaKernels kAvx2Kernels{{kAvx2MR, kAvx2NR}, micro_avx2, pack_half_word_panels, true,
                                  pack_row_avx2, pack_ge_row_i32_avx2, conv_threshold_rows_avx2};

}  // namespace

const IsaKernels& avx2_kernels() { return kAvx2Kernels; }

}  // namespace detail
}  // namespace bnn_cpu
#endif  // BNN_X86
