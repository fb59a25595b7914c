// The scalar CPU XNOR kernels: plain C++ for any CPU, and the micro-kernel with the POPCNT instruction where
// an x86-64 CPU has it (picked once, when the table is first used).
#include "xnor_counts.h"

namespace bnn_cpu {
namespace detail {
namespace {

// c[r * ldc + j] = k - 2 * popcount for the rows < rows and columns < cols of the block that lie in c.
template <int MR, int NR>
BNN_INLINE void store_block(const int64_t (&popc)[MR][NR], int64_t k, int rows, int cols, int32_t* c, int64_t ldc) {
  for (int r = 0; r < rows; ++r)
    for (int j = 0; j < cols; ++j) c[r * ldc + j] = (int32_t)(k - 2 * popc[r][j]);
}

// Scalar: a panel of MR rows against one of NR columns (scalar_counts), stored.
template <int MR, int NR, typename Popcount>
BNN_INLINE void micro_scalar(const uint64_t* ap, const uint64_t* bp, int64_t words, int64_t k, int rows, int cols,
                             int32_t* c, int64_t ldc, Popcount popcount) {
  int64_t popc[MR][NR] = {};
  scalar_counts<MR, NR>(ap, {MR, 1}, bp, words, popc, popcount);
  store_block<MR, NR>(popc, k, rows, cols, c, ldc);
}

void micro_scalar_portable(const uint64_t* ap, const uint64_t* bp, int64_t words, int64_t k, int rows, int cols,
                           int32_t* c, int64_t ldc) {
  micro_scalar<kScalarMR, kScalarNR>(ap, bp, words, k, rows, cols, c, ldc,
                                     [](uint64_t x) { return (int64_t)__builtin_popcountll(x); });
}

void conv_threshold_rows_portable(const ConvThreshold& t, int64_t r0, int64_t r1, int32_t* scratch, uint64_t* out) {
  conv_threshold_rows_impl(t, r0, r1, scratch, out, pack_ge_row<int32_t>);
}

#if BNN_X86
// Scalar with the POPCNT instruction (every x86-64 CPU of the last fifteen years; the portable version's
// __builtin_popcountll is a bit-twiddling sequence when the build targets plain x86-64).
__attribute__((target("popcnt"))) void micro_scalar_popcnt(const uint64_t* ap, const uint64_t* bp, int64_t words,
                                                           int64_t k, int rows, int cols, int32_t* c, int64_t ldc) {
  micro_scalar<kScalarMR, kScalarNR>(ap, bp, words, k, rows, cols, c, ldc,
                                     [](uint64_t x) __attribute__((target("popcnt"))) {
                                       return (int64_t)_mm_popcnt_u64(x);
                                     });
}
#endif

}  // namespace

const IsaKernels& scalar_kernels() {
  static const IsaKernels table = [] {
    IsaKernels kernels{{kScalarMR, kScalarNR}, micro_scalar_portable, pack_word_panels<kScalarNR>, false,
                       pack_row_scalar<float>, pack_ge_row<int32_t>, conv_threshold_rows_portable, few_rows_scalar,
                       nullptr, nullptr, nullptr};
#if BNN_X86
    if (__builtin_cpu_init(), __builtin_cpu_supports("popcnt")) {
      kernels.micro = micro_scalar_popcnt;
      kernels.few_rows = few_rows_scalar_popcnt;
    }
#endif
    return kernels;
  }();
  return table;
}

}  // namespace detail
}  // namespace bnn_cpu
