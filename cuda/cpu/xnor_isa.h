// The CPU XNOR kernels' parts that differ by instruction set, gathered in one table per instruction set
// (xnor_scalar.cpp, xnor_avx2.cpp, xnor_avx512.cpp, each compiled with function-level target attributes), and
// the plain code they share. Internal to cuda/cpu: callers use xnor_kernels.h, whose functions pick a table by
// Isa in one place (kernels_for in xnor_kernels.cpp).
#pragma once
#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstring>

#include "xnor_kernels.h"

#if defined(__x86_64__) || defined(_M_X64)
#define BNN_X86 1
#define BNN_TARGET_AVX2 __attribute__((target("avx2,popcnt")))
#define BNN_TARGET_AVX512 __attribute__((target("avx512f,avx512vpopcntdq,popcnt")))
#else
#define BNN_X86 0
#endif
#define BNN_INLINE inline __attribute__((always_inline))

namespace bnn_cpu {
namespace detail {

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
// micro-kernels never mask: a zero bit XOR a zero bit counts nothing. A micro-kernel computes one
// MR x NR block of c from one a panel and one b panel, its counts in registers for the whole of k (no
// partial sums in memory, no horizontal reductions): in the vector kernels one vector lane is one column of
// c, so the b panel's words load straight into the lanes and each word (or half-word) of a is broadcast.

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

// Packs rows of float32 signs (pack_rows' work for one row).
using RowPacker = void (*)(const float* x, int64_t k, uint64_t* out);
// The threshold form for one row of int32 values (pack_ge_rows_i32's work for one row).
using GeRowPacker = void (*)(const int32_t* value, const int32_t* bound, int64_t n, uint64_t* out);
// conv_threshold_rows for one instruction set.
using ConvThresholdRows = void (*)(const ConvThreshold& t, int64_t r0, int64_t r1, int32_t* scratch, uint64_t* out);
// xnor_few_rows for one instruction set.
using FewRowsKernel = void (*)(const uint64_t* a, int rows, int64_t words, int64_t k, const uint64_t* b_panels,
                               int64_t n0, int64_t n1, const FewRowsOutput& out);
// nibble_tables and nibble_row for one instruction set (null where it has none).
using NibbleTables = int64_t (*)(const uint8_t* x, int64_t k, uint8_t* tables);
using NibbleRow = void (*)(const uint8_t* tables, int64_t k, const uint8_t* weights, int64_t n0, int64_t n1,
                           const int32_t* offset, int32_t bias, const FewRowsOutput& out);
// float_sign_word for one instruction set (null where it has none).
using FloatSignWord = void (*)(const float* x, int64_t n, int64_t k, const uint64_t* negative, int64_t words,
                               int64_t wd, float* y, int64_t ldy);

// Everything that differs by instruction set: the GEMM's micro-kernel with its panel shape and b's packing, and
// the vector forms of packing and of the convolution's epilogue.
struct IsaKernels {
  PanelShape shape;
  MicroKernel micro;
  PanelPacker pack_b;
  // Which panel stays in the L1 cache while the others pass: b's (each b panel meets every a panel of the
  // tile in turn) or a's (each a panel meets the tile's few b panels). The AVX2 kernel sweeps its b panel
  // once per row of a and ran faster with a's panel resident; the AVX-512 one showed no difference.
  bool a_panel_resident;
  RowPacker pack_row;
  GeRowPacker pack_ge_row_i32;
  ConvThresholdRows conv_threshold_rows;
  FewRowsKernel few_rows;
  NibbleTables nibble_tables;
  NibbleRow nibble_row;
  FloatSignWord float_sign_word;
};

// The few-row kernels (xnor_rows.cpp), which the tables name.
void few_rows_scalar(const uint64_t* a, int rows, int64_t words, int64_t k, const uint64_t* b_panels, int64_t n0,
                     int64_t n1, const FewRowsOutput& out);
#if BNN_X86
void few_rows_scalar_popcnt(const uint64_t* a, int rows, int64_t words, int64_t k, const uint64_t* b_panels,
                            int64_t n0, int64_t n1, const FewRowsOutput& out);
void few_rows_avx2(const uint64_t* a, int rows, int64_t words, int64_t k, const uint64_t* b_panels, int64_t n0,
                   int64_t n1, const FewRowsOutput& out);
void few_rows_avx512(const uint64_t* a, int rows, int64_t words, int64_t k, const uint64_t* b_panels, int64_t n0,
                     int64_t n1, const FewRowsOutput& out);
// The nibble-table first layer and the float one's sign word (xnor_rows.cpp) on AVX2, which the AVX-512 table names
// too: every CPU with AVX-512 has AVX2 (the tables' 16 entries fill a 128-bit lane whatever the vector width).
int64_t nibble_tables_avx2(const uint8_t* x, int64_t k, uint8_t* tables);
void nibble_row_avx2(const uint8_t* tables, int64_t k, const uint8_t* weights, int64_t n0, int64_t n1,
                     const int32_t* offset, int32_t bias, const FewRowsOutput& out);
void float_sign_word_avx2(const float* x, int64_t n, int64_t k, const uint64_t* negative, int64_t words, int64_t wd,
                          float* y, int64_t ldy);
#endif

// Each instruction set's table, defined in its own file.
const IsaKernels& scalar_kernels();
#if BNN_X86
const IsaKernels& avx2_kernels();
const IsaKernels& avx512_kernels();
#endif

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

}  // namespace detail
}  // namespace bnn_cpu
