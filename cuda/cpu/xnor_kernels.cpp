// CPU kernels (see xnor_kernels.h): the code common to every instruction set, and the one place that picks an
// instruction set's table of kernels (kernels_for; the tables are in xnor_scalar.cpp, xnor_avx2.cpp and
// xnor_avx512.cpp). One build serves every x86-64 CPU.
#include "xnor_kernels.h"

#include "xnor_isa.h"

#include <cstring>

namespace bnn_cpu {
using namespace detail;

namespace {

// The kernels of `isa`; an instruction set this build has no table for (AVX2 and AVX-512 off x86-64) gets the
// scalar one, as isa_supported refuses it there.
const IsaKernels& kernels_for(Isa isa) {
#if BNN_X86
  if (isa == Isa::avx512) return avx512_kernels();
  if (isa == Isa::avx2) return avx2_kernels();
#endif
  (void)isa;
  return scalar_kernels();
}

// One panel of x's im2col rows: rows first_row .. first_row + width - 1, those at or past end_row all zero.
void conv_panel(const ConvInput& x, int width, int64_t first_row, int64_t end_row, uint64_t* panel) {
  const int64_t taps = (int64_t)x.kernel * x.kernel;
  for (int i = 0; i < width; ++i) {
    const int64_t row = first_row + i;
    const int64_t image = row / (x.height * x.width), pixel = row % (x.height * x.width);
    const int64_t y = pixel / x.width, xx = pixel % x.width;
    for (int64_t t = 0; t < taps; ++t) {
      const int64_t yy = y + t / x.kernel - x.padding, xt = xx + t % x.kernel - x.padding;
      const bool inside = row < end_row && yy >= 0 && yy < x.height && xt >= 0 && xt < x.width;
      const uint64_t* src = inside ? x.words + ((image * x.height + yy) * x.width + xt) * x.channel_words : nullptr;
      uint64_t* dst = panel + t * x.channel_words * width + i;
      for (int64_t j = 0; j < x.channel_words; ++j) dst[j * width] = inside ? src[j] : 0;
    }
  }
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
  const RowPacker pack_row = kernels_for(isa).pack_row;
  const int64_t words = words_for(k);
  for (int64_t r = 0; r < rows; ++r) pack_row(x + r * k, k, out + r * words);
}

void pack_rows_f64(const double* x, int64_t rows, int64_t k, uint64_t* out) {
  const int64_t words = words_for(k);
  for (int64_t r = 0; r < rows; ++r) pack_row_scalar(x + r * k, k, out + r * words);
}

void pack_ge_rows_i32(Isa isa, const int32_t* value, const int32_t* bound, int64_t rows, int64_t n, uint64_t* out) {
  const GeRowPacker pack_row = kernels_for(isa).pack_ge_row_i32;
  const int64_t words = words_for(n);
  for (int64_t r = 0; r < rows; ++r) pack_row(value + r * n, bound, n, out + r * words);
}

void pack_ge_rows_f32(const float* value, const float* bound, int64_t rows, int64_t n, uint64_t* out) {
  const int64_t words = words_for(n);
  for (int64_t r = 0; r < rows; ++r) pack_ge_row(value + r * n, bound, n, out + r * words);
}

PanelShape panel_shape(Isa isa) { return kernels_for(isa).shape; }

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
  const int64_t rows = x.images * x.height * x.width, words = (int64_t)x.kernel * x.kernel * x.channel_words;
  for (int64_t p = p0; p < p1; ++p) conv_panel(x, width, p * width, rows, out + p * words * width);
}

void pack_conv_rows(const ConvInput& x, int width, int64_t row0, int64_t rows, uint64_t* out) {
  const int64_t words = (int64_t)x.kernel * x.kernel * x.channel_words;
  for (int64_t p = 0; p * width < rows; ++p)
    conv_panel(x, width, row0 + p * width, row0 + rows, out + p * words * width);
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
  kernels_for(isa).pack_b(src, rows, words, k, p0, p1, out);
}

void xnor_panels(Isa isa, const uint64_t* a_panels, const uint64_t* b_panels, int64_t words, int64_t k, int64_t m0,
                 int64_t m1, int64_t n0, int64_t n1, int32_t* c, int64_t ldc) {
  const IsaKernels kernel = kernels_for(isa);
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

void xnor_few_rows(Isa isa, const uint64_t* a, int rows, int64_t words, int64_t k, const uint64_t* b_panels,
                   int64_t n0, int64_t n1, const FewRowsOutput& out) {
  kernels_for(isa).few_rows(a, rows, words, k, b_panels, n0, n1, out);
}

bool nibble_rows_available(Isa isa) { return kernels_for(isa).nibble_row != nullptr; }

void pack_nibble_weights(const uint64_t* rows, int64_t out, int64_t words, int64_t k, uint8_t* dst) {
  const int64_t octets = nibble_inputs(k) / 8;
  std::memset(dst, 0, (size_t)nibble_weight_bytes(out, k));
  for (int64_t j = 0; j < out; ++j) {
    uint8_t* column = dst + (j / kNibbleOutputs) * octets * kNibbleOutputs + j % kNibbleOutputs;
    for (int64_t i = 0; i < k; ++i)
      if ((rows[j * words + i / 64] >> (i % 64)) & 1) column[(i / 8) * kNibbleOutputs] |= (uint8_t)(1u << (i % 8));
  }
}

int64_t nibble_tables(Isa isa, const uint8_t* x, int64_t k, uint8_t* tables) {
  return kernels_for(isa).nibble_tables(x, k, tables);
}

void nibble_row(Isa isa, const uint8_t* tables, int64_t k, const uint8_t* weights, int64_t n0, int64_t n1,
                const int32_t* offset, int32_t bias, const FewRowsOutput& out) {
  kernels_for(isa).nibble_row(tables, k, weights, n0, n1, offset, bias, out);
}

bool float_sign_word_available(Isa isa) { return kernels_for(isa).float_sign_word != nullptr; }

void float_sign_word(Isa isa, const float* x, int64_t n, int64_t k, const uint64_t* negative, int64_t words,
                     int64_t wd, float* y, int64_t ldy) {
  kernels_for(isa).float_sign_word(x, n, k, negative, words, wd, y, ldy);
}

void conv_threshold_rows(Isa isa, const ConvThreshold& t, int64_t r0, int64_t r1, int32_t* scratch, uint64_t* out) {
  kernels_for(isa).conv_threshold_rows(t, r0, r1, scratch, out);
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
