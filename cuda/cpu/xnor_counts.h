// The popcount loops of each instruction set, shared by the many-row micro-kernels (xnor_scalar.cpp,
// xnor_avx2.cpp, xnor_avx512.cpp: a's rows in panels) and the few-row ones (xnor_rows.cpp: a's rows as they
// are). Internal to cuda/cpu. Each loop counts popcount(a_r XOR b_j) over all of k for a block of rows r of a
// and one panel of b (pack_b_panels' layout for the instruction set), its counts in registers.
#pragma once
#include "xnor_isa.h"

#if BNN_X86
#include <immintrin.h>
#endif

namespace bnn_cpu {
namespace detail {

// Where a's words lie: word w of row r at a[w * word_stride + r * row_stride]. A panel of width MR has
// {MR, 1}; rows as they are (row-major), {1, words}.
struct RowsLayout {
  int64_t word_stride, row_stride;
};

// Scalar: MR x NR 64-bit counters in general registers, one popcount per word and output; b's panel holds
// word w of its column j at bp[w * NR + j].
template <int MR, int NR, typename Popcount>
BNN_INLINE void scalar_counts(const uint64_t* a, RowsLayout layout, const uint64_t* bp, int64_t words,
                              int64_t (&popc)[MR][NR], Popcount popcount) {
  for (int64_t w = 0; w < words; ++w) {
    uint64_t bw[NR];
    for (int j = 0; j < NR; ++j) bw[j] = bp[w * NR + j];
    for (int r = 0; r < MR; ++r) {
      const uint64_t aw = a[w * layout.word_stride + r * layout.row_stride];
      for (int j = 0; j < NR; ++j) popc[r][j] += popcount(aw ^ bw[j]);
    }
  }
}

constexpr int kScalarMR = 2, kScalarNR = 4;  // 8 counters + 4 b words + 2 a words in 16 registers

#if BNN_X86

// ---- AVX2: a Harley-Seal tree (Mula, Kurz, Lemire) per row of a, over 32-bit half-words ------------------------
// A vector holds 32 bits of k for each of a b panel's 8 columns, so one carry-save adder tree serves 8 outputs
// at once: 32-bit lanes rather than 64 halve the per-output cost of emptying the tree at the end of k, a sizeable
// part of the work at k = 4096. b's panels hold 32-bit half-words (pack_b_panels): half h of word w of the
// panel's column i is uint32 [(w * 2 + h) * 8 + i], one vector per half-word; a's half-words are broadcast from
// memory (vbroadcastss: a load, no ALU work).
constexpr int kAvx2NR = 8;

// Byte counters take at most 8 per step (the popcount of one byte), so 31 steps fit: 31 * 8 = 248 <= 255.
constexpr int64_t kMaxByteSteps = 31;

// The popcount of each byte of x by nibble lookup (vpshufb): 2 and, shift, 2 vpshufb, add.
BNN_TARGET_AVX2 BNN_INLINE __m256i nibble_popcount(__m256i x, __m256i lut, __m256i low4) {
  const __m256i lo = _mm256_shuffle_epi8(lut, _mm256_and_si256(x, low4));
  const __m256i hi = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(x, 4), low4));
  return _mm256_add_epi8(lo, hi);
}

BNN_TARGET_AVX2 BNN_INLINE void carry_save(__m256i& high, __m256i& low, __m256i a, __m256i b, __m256i c) {
  const __m256i u = _mm256_xor_si256(a, b);
  high = _mm256_or_si256(_mm256_and_si256(a, b), _mm256_and_si256(u, c));
  low = _mm256_xor_si256(u, c);
}

// The sums of each 32-bit lane's four bytes, each byte times `weight` (at most 255 * 2 * weight per 16-bit pair).
BNN_TARGET_AVX2 BNN_INLINE __m256i lane_sums_32(__m256i bytes, int8_t weight) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(bytes, _mm256_set1_epi8(weight)), _mm256_set1_epi16(1));
}

// Half-word q of a's row, whose words lie AStride words apart from a (half h of word w at a[w * 2 * AStride + h]),
// broadcast, XOR half-word q of the panel's 8 columns, which start at b.
template <int AStride>
BNN_TARGET_AVX2 BNN_INLINE __m256i half_word_xor(const uint32_t* a, const uint32_t* b, int64_t q) {
  const float* a_half = reinterpret_cast<const float*>(a + (q >> 1) * 2 * AStride + (q & 1));
  return _mm256_xor_si256(_mm256_castps_si256(_mm256_broadcast_ss(a_half)),
                          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + q * kAvx2NR)));
}

// Half-words 0..7 from a and b into the tree's ones, twos and fours; out: the eights they carry.
template <int AStride>
BNN_TARGET_AVX2 BNN_INLINE void add_eight(__m256i& eights_out, __m256i& ones, __m256i& twos, __m256i& fours,
                                          const uint32_t* a, const uint32_t* b) {
  __m256i twos_a, twos_b, fours_a, fours_b;
  carry_save(twos_a, ones, half_word_xor<AStride>(a, b, 0), half_word_xor<AStride>(a, b, 1), ones);
  carry_save(twos_b, ones, half_word_xor<AStride>(a, b, 2), half_word_xor<AStride>(a, b, 3), ones);
  carry_save(fours_a, twos, twos_a, twos_b, twos);
  carry_save(twos_a, ones, half_word_xor<AStride>(a, b, 4), half_word_xor<AStride>(a, b, 5), ones);
  carry_save(twos_b, ones, half_word_xor<AStride>(a, b, 6), half_word_xor<AStride>(a, b, 7), ones);
  carry_save(fours_b, twos, twos_a, twos_b, twos);
  carry_save(eights_out, fours, fours_a, fours_b, fours);
}

// popcount(a XOR b_j) over `words` words for the panel's 8 columns j, one per 32-bit lane: a's row at a32 (its
// words AStride words apart), the panel at b32.
template <int AStride>
BNN_TARGET_AVX2 BNN_INLINE __m256i avx2_row_counts(const uint32_t* a32, const uint32_t* b32, int64_t words) {
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                       0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i low4 = _mm256_set1_epi8(0x0f);
  // Emptying the tree costs about as much as counting 4 half-words by lookup: below 32 half-words (k < 1024)
  // plain lookup is cheaper.
  const int64_t halves = 2 * words, blocks = halves >= 32 ? halves / 16 : 0;
  // The tree's state: bit planes of weight 1, 2, 4 and 8 per bit position. Every 16 half-words its sixteens are
  // counted by nibble lookup into bytes (at most 8 per byte each time), which are summed into 32-bit lanes every
  // kMaxByteSteps blocks, before a byte could overflow.
  __m256i ones = _mm256_setzero_si256(), twos = ones, fours = ones, eights = ones, sixteens_bytes = ones, total = ones;
  int64_t pending = 0;  // blocks counted into sixteens_bytes
  for (int64_t block = 0; block < blocks; ++block) {
    const uint32_t* a_block = a32 + block * 16 * AStride;  // 8 words of a's row
    const uint32_t* b_block = b32 + block * 16 * kAvx2NR;  // 16 half-word vectors of b's panel
    __m256i eights_a, eights_b, sixteens;
    add_eight<AStride>(eights_a, ones, twos, fours, a_block, b_block);
    add_eight<AStride>(eights_b, ones, twos, fours, a_block + 8 * AStride, b_block + 8 * kAvx2NR);
    carry_save(sixteens, eights, eights_a, eights_b, eights);
    sixteens_bytes = _mm256_add_epi8(sixteens_bytes, nibble_popcount(sixteens, lut, low4));
    if (++pending == kMaxByteSteps) {
      pending = 0;
      total = _mm256_add_epi32(total, lane_sums_32(sixteens_bytes, 16));
      sixteens_bytes = _mm256_setzero_si256();
    }
  }
  // What is left in the tree (at most 8 + 4 + 2 + 1 = 15 per bit position, 120 per byte), then the last
  // half-words by plain lookup (fewer than 16 after the tree, at most 31 without it; at most 8 per byte each):
  // at most 248 per byte.
  __m256i bytes = _mm256_setzero_si256();
  if (blocks > 0)
    bytes = _mm256_add_epi8(
        _mm256_add_epi8(_mm256_slli_epi16(nibble_popcount(eights, lut, low4), 3),
                        _mm256_slli_epi16(nibble_popcount(fours, lut, low4), 2)),
        _mm256_add_epi8(_mm256_slli_epi16(nibble_popcount(twos, lut, low4), 1), nibble_popcount(ones, lut, low4)));
  for (int64_t w = 8 * blocks; w < words; ++w) {
    const uint32_t* a_word = a32 + w * 2 * AStride;
    const uint32_t* b_word = b32 + w * 2 * kAvx2NR;
    const __m256i low = nibble_popcount(half_word_xor<AStride>(a_word, b_word, 0), lut, low4);
    const __m256i high = nibble_popcount(half_word_xor<AStride>(a_word, b_word, 1), lut, low4);
    bytes = _mm256_add_epi8(bytes, _mm256_add_epi8(low, high));
  }
  return _mm256_add_epi32(total, _mm256_add_epi32(lane_sums_32(sixteens_bytes, 16), lane_sums_32(bytes, 1)));
}

// k - 2 * count per lane; k and the count fit in int32 (the callers refuse larger k).
BNN_TARGET_AVX2 BNN_INLINE __m256i avx2_products(__m256i counts, int64_t k) {
  return _mm256_sub_epi32(_mm256_set1_epi32((int32_t)k), _mm256_slli_epi32(counts, 1));
}

// ---- AVX-512 VPOPCNTDQ: eight columns per vector, xor + vpopcntq + add per word, 64-bit counters -------------
// b's panels hold 32 columns (pack_word_panels): word w of column j at bp[w * 32 + j].
constexpr int kAvx512NV = 4, kAvx512NR = 8 * kAvx512NV;

template <int MR, int NV>
BNN_TARGET_AVX512 BNN_INLINE void avx512_counts(const uint64_t* a, RowsLayout layout, const uint64_t* bp,
                                                int64_t words, __m512i (&acc)[MR][NV]) {
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_si512();
  for (int64_t w = 0; w < words; ++w) {
    __m512i bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = _mm512_loadu_si512(bp + w * kAvx512NR + 8 * v);
    for (int r = 0; r < MR; ++r) {
      const __m512i av = _mm512_set1_epi64((int64_t)a[w * layout.word_stride + r * layout.row_stride]);
      for (int v = 0; v < NV; ++v)
        acc[r][v] = _mm512_add_epi64(acc[r][v], _mm512_popcnt_epi64(_mm512_xor_si512(av, bv[v])));
    }
  }
}

#endif  // BNN_X86

}  // namespace detail
}  // namespace bnn_cpu
