// The torch glue of the inference ops: defines the `bnnctl` op library (TORCH_LIBRARY; the training ops add
// theirs in training_ops.cpp) and implements packing, the XNOR GEMM and convolution, the float baseline and the
// choice of CPU instruction set for CPU tensors on torch's thread pool, around the kernels of cpu/xnor_kernels.h.
// The CUDA implementations live in inference_ops_cuda.cpp, which is compiled only when CUDA is usable, so this
// file never needs CUDA. Only light ATen headers here (not torch/extension.h): the glue is the slow code to compile.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <optional>
#include <string>
#include <vector>

#include "../cpu/xnor_kernels.h"
#include "op_checks.h"
#include "torch_cpu.h"

namespace {

std::atomic<int> g_isa{-1};  // see current_isa

}  // namespace

bnn_cpu::Isa bnn_glue::current_isa() {
  int isa = g_isa.load();
  if (isa < 0) {
    isa = (int)bnn_cpu::best_isa();
    g_isa.store(isa);
  }
  return (bnn_cpu::Isa)isa;
}

namespace {

using bnn_glue::current_isa;

std::string cpu_isa() { return bnn_cpu::isa_name(current_isa()); }

std::string set_cpu_isa(const std::string& name) {
  bnn_cpu::Isa isa;
  TORCH_CHECK(bnn_cpu::parse_isa(name.c_str(), &isa), "unknown CPU instruction set '", name,
              "' (expected scalar, avx2 or avx512vpopcntdq)");
  TORCH_CHECK(bnn_cpu::isa_supported(isa), "this CPU cannot run the ", name, " kernels");
  g_isa.store((int)isa);
  return name;
}

std::vector<std::string> supported_cpu_isas() {
  std::vector<std::string> names;
  for (bnn_cpu::Isa isa : {bnn_cpu::Isa::scalar, bnn_cpu::Isa::avx2, bnn_cpu::Isa::avx512})
    if (bnn_cpu::isa_supported(isa)) names.emplace_back(bnn_cpu::isa_name(isa));
  return names;
}

// Rows per task of the packing loops: about 64 K elements.
int64_t pack_grain(int64_t k) { return std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(k, 1)); }

// float32 and float64 are packed from their own bits (a float64 is never rounded to float32 first).
at::Tensor pack_cpu(const at::Tensor& x) {
  bnn_ops::check_pack_input(x);
  const int64_t rows = x.size(0), k = x.size(1), words = bnn_ops::words_for(k);
  at::Tensor out = at::empty({rows, words}, x.options().dtype(at::kLong));
  uint64_t* dst = reinterpret_cast<uint64_t*>(out.data_ptr<int64_t>());
  if (x.scalar_type() == at::kDouble) {
    const double* src = x.data_ptr<double>();
    at::parallel_for(0, rows, pack_grain(k), [&](int64_t r0, int64_t r1) {
      bnn_cpu::pack_rows_f64(src + r0 * k, r1 - r0, k, dst + r0 * words);
    });
    return out;
  }
  const float* src = x.data_ptr<float>();
  const bnn_cpu::Isa isa = current_isa();
  at::parallel_for(0, rows, pack_grain(k), [&](int64_t r0, int64_t r1) {
    bnn_cpu::pack_rows(isa, src + r0 * k, r1 - r0, k, dst + r0 * words);
  });
  return out;
}

// Packed bits of (value[r, j] >= bound[j]): int32 or float32, compared exactly in that type.
at::Tensor pack_ge_cpu(const at::Tensor& value, const at::Tensor& bound) {
  bnn_ops::check_pack_ge_input(value, bound);
  const int64_t rows = value.size(0), n = value.size(1), words = bnn_ops::words_for(n);
  at::Tensor out = at::empty({rows, words}, value.options().dtype(at::kLong));
  uint64_t* dst = reinterpret_cast<uint64_t*>(out.data_ptr<int64_t>());
  if (value.scalar_type() == at::kInt) {
    const int32_t* v = value.data_ptr<int32_t>();
    const int32_t* b = bound.data_ptr<int32_t>();
    const bnn_cpu::Isa isa = current_isa();
    at::parallel_for(0, rows, pack_grain(n), [&](int64_t r0, int64_t r1) {
      bnn_cpu::pack_ge_rows_i32(isa, v + r0 * n, b, r1 - r0, n, dst + r0 * words);
    });
  } else {
    const float* v = value.data_ptr<float>();
    const float* b = bound.data_ptr<float>();
    at::parallel_for(0, rows, pack_grain(n), [&](int64_t r0, int64_t r1) {
      bnn_cpu::pack_ge_rows_f32(v + r0 * n, b, r1 - r0, n, dst + r0 * words);
    });
  }
  return out;
}

// Runs block(m0, m1, n0, n1) over an (m, n) output cut into tiles of tile_m x tile_n, on torch's threads.
// Within a tile the kernels sweep a's rows past the tile's rows of b, which stay in the L1 cache.
template <typename Block>
void for_each_tile(int64_t m, int64_t n, int64_t tile_m, int64_t tile_n, const Block& block) {
  bnn_cpu::for_each_tile(bnn_glue::TorchParallel(), m, n, tile_m, tile_n, block);
}

// The binary convolution's epilogue (bnn_cpu::conv_threshold_rows), in parallel over output rows.
at::Tensor conv_threshold_cpu(const at::Tensor& products, const std::optional<at::Tensor>& correction, int64_t pool,
                              const std::optional<at::Tensor>& direction, const at::Tensor& bound) {
  TORCH_CHECK(products.dim() == 4 && products.scalar_type() == at::kInt && products.is_contiguous(),
              "bnnctl::conv_threshold expects contiguous int32 products (images, height, width, channels)");
  const int64_t n = products.size(0), h = products.size(1), w = products.size(2), c = products.size(3);
  TORCH_CHECK(pool >= 1 && pool <= std::max<int64_t>(1, std::min(h, w)), "bnnctl::conv_threshold: pool ", pool,
              " does not fit a ", h, " x ", w, " map");
  auto check_vector = [&](const at::Tensor& t, int64_t size, const char* what) {
    TORCH_CHECK(t.scalar_type() == at::kInt && t.is_contiguous() && t.numel() == size && t.device().is_cpu(),
                "bnnctl::conv_threshold: ", what, " must be a contiguous int32 CPU tensor of ", size, " values");
  };
  check_vector(bound, c, "bound");
  if (correction) check_vector(*correction, h * w * c, "correction");
  if (direction) check_vector(*direction, c, "direction");
  const int64_t h2 = h / pool, w2 = w / pool, words = bnn_ops::words_for(c);
  at::Tensor out = at::empty({n, h2, w2, words}, products.options().dtype(at::kLong));
  const bnn_cpu::ConvThreshold t{products.data_ptr<int32_t>(), correction ? correction->data_ptr<int32_t>() : nullptr,
                                 direction ? direction->data_ptr<int32_t>() : nullptr, bound.data_ptr<int32_t>(),
                                 h, w, c, (int)pool};
  uint64_t* dst = reinterpret_cast<uint64_t*>(out.data_ptr<int64_t>());
  const bnn_cpu::Isa isa = current_isa();
  at::parallel_for(0, n * h2, 1, [&](int64_t r0, int64_t r1) {
    std::vector<int32_t> scratch(c);
    bnn_cpu::conv_threshold_rows(isa, t, r0, r1, scratch.data(), dst);
  });
  return out;
}

// The panels of packed (rows, words), `width` rows each, from pack(src, rows, words, p0, p1, out), in parallel.
template <typename Pack>
at::Tensor panels_cpu(const at::Tensor& packed, int width, Pack pack) {
  const int64_t rows = packed.size(0), words = packed.size(1), panels = (rows + width - 1) / width;
  at::Tensor out = at::empty({panels * words * width}, packed.options());
  const uint64_t* src = reinterpret_cast<const uint64_t*>(packed.data_ptr<int64_t>());
  uint64_t* dst = reinterpret_cast<uint64_t*>(out.data_ptr<int64_t>());
  at::parallel_for(0, panels, std::max<int64_t>(1, pack_grain(words * 64) / width),
                   [&](int64_t p0, int64_t p1) { pack(src, rows, words, p0, p1, dst); });
  return out;
}

// a's rows in panels of `width` rows (bnn_cpu::pack_panels).
at::Tensor pack_panels_cpu(const at::Tensor& packed, int64_t k, int width) {
  return panels_cpu(packed, width, [&](const uint64_t* src, int64_t rows, int64_t words, int64_t p0, int64_t p1,
                                       uint64_t* dst) { bnn_cpu::pack_panels(src, rows, words, k, width, p0, p1, dst); });
}

// b's rows in panels for isa's micro-kernel (bnn_cpu::pack_b_panels).
at::Tensor pack_b_panels_cpu(const at::Tensor& packed, int64_t k, bnn_cpu::Isa isa) {
  return panels_cpu(packed, bnn_cpu::panel_shape(isa).cols,
                    [&](const uint64_t* src, int64_t rows, int64_t words, int64_t p0, int64_t p1, uint64_t* dst) {
                      bnn_cpu::pack_b_panels(isa, src, rows, words, k, p0, p1, dst);
                    });
}

// c (m, n) from a's rows in panels (pack_panels or pack_conv_panels) and b (n, words), packed here.
at::Tensor xnor_gemm_panels(const at::Tensor& a_panels, int64_t m, const at::Tensor& b, int64_t k, bnn_cpu::Isa isa) {
  const int64_t n = b.size(0), words = b.size(1);
  at::Tensor c = at::empty({m, n}, b.options().dtype(at::kInt));
  if (m == 0 || n == 0) return c;
  const at::Tensor b_panels = pack_b_panels_cpu(b, k, isa);
  const uint64_t* pa = reinterpret_cast<const uint64_t*>(a_panels.data_ptr<int64_t>());
  const uint64_t* pb = reinterpret_cast<const uint64_t*>(b_panels.data_ptr<int64_t>());
  int32_t* pc = c.data_ptr<int32_t>();
  const bnn_cpu::PanelShape tile = bnn_cpu::xnor_tile(isa, words);
  for_each_tile(m, n, tile.rows, tile.cols, [&](int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
    bnn_cpu::xnor_panels(isa, pa, pb, words, k, m0, m1, n0, n1, pc, n);
  });
  return c;
}

at::Tensor xnor_gemm_cpu(const at::Tensor& a, const at::Tensor& b, int64_t k) {
  bnn_ops::check_packed_pair(a, b, k);
  const bnn_cpu::Isa isa = current_isa();
  return xnor_gemm_panels(pack_panels_cpu(a, k, bnn_cpu::panel_shape(isa).rows), a.size(0), b, k, isa);
}

// The stride-1 binary convolution of channels-last packed words x (N, H, W, C words) with b (out, kernel *
// kernel * C words, taps in (kh, kw) order): int32 (N * H * W, out), the XNOR GEMM of x's im2col matrix, whose
// rows are gathered into the GEMM's panels straight from x.
at::Tensor xnor_conv_cpu(const at::Tensor& x, const at::Tensor& b, int64_t kernel, int64_t padding) {
  TORCH_CHECK(x.dim() == 4 && x.scalar_type() == at::kLong && x.is_contiguous() && x.device().is_cpu(),
              "bnnctl::xnor_conv expects contiguous int64 packed words (images, height, width, channel words)");
  TORCH_CHECK(kernel >= 1 && 2 * padding == kernel - 1, "bnnctl::xnor_conv: kernel ", kernel, " and padding ", padding,
              " do not keep the image's size (2 * padding = kernel - 1)");
  const int64_t channel_words = x.size(3), k = kernel * kernel * channel_words * 64;
  TORCH_CHECK(b.dim() == 2 && b.scalar_type() == at::kLong && b.is_contiguous() && b.device().is_cpu() &&
                  b.size(1) == kernel * kernel * channel_words,
              "bnnctl::xnor_conv expects contiguous int64 weight words (out, ", kernel * kernel * channel_words, ")");
  const bnn_cpu::Isa isa = current_isa();
  const int width = bnn_cpu::panel_shape(isa).rows;
  const bnn_cpu::ConvInput in{reinterpret_cast<const uint64_t*>(x.data_ptr<int64_t>()), x.size(0), x.size(1),
                              x.size(2), channel_words, (int)kernel, (int)padding};
  const int64_t m = in.images * in.height * in.width, panels = (m + width - 1) / width;
  at::Tensor a_panels = at::empty({panels * b.size(1) * width}, x.options());
  uint64_t* dst = reinterpret_cast<uint64_t*>(a_panels.data_ptr<int64_t>());
  at::parallel_for(0, panels, 16, [&](int64_t p0, int64_t p1) { bnn_cpu::pack_conv_panels(in, width, p0, p1, dst); });
  return xnor_gemm_panels(a_panels, m, b, k, isa);
}

at::Tensor baseline_gemm_cpu(const at::Tensor& a, const at::Tensor& b) {
  bnn_ops::check_float_pair(a, b);
  const int64_t m = a.size(0), n = b.size(0), k = a.size(1);
  at::Tensor c = at::empty({m, n}, a.options());
  if (m == 0 || n == 0) return c;
  const float* pa = a.data_ptr<float>();
  const float* pb = b.data_ptr<float>();
  float* pc = c.data_ptr<float>();
  for_each_tile(m, n, 64, 64, [&](int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
    bnn_cpu::float_gemm_block(pa, pb, k, m0, m1, n0, n1, pc, n);
  });
  return c;
}

// xnor_tc_gemm runs on tensor cores (cuda/xnor_tc.cu); for CPU tensors the CPU XNOR kernel gives the same
// products, and the threshold form packs bit = (dot >= bound) with the same integer boundaries as the
// kernel's epilogue (bnn_ops::threshold_bounds), in integers: exact for every k and threshold.
at::Tensor xnor_tc_gemm_cpu(const at::Tensor& a, const at::Tensor& b, int64_t k,
                            const std::optional<at::Tensor>& thresh, bool /*wgmma*/, int64_t /*config*/) {
  // Which tensor-core instruction and kernel configuration have no meaning on the CPU.
  bnn_ops::check_packed_pair(a, b, k);
  const at::Tensor bounds = thresh ? bnn_ops::threshold_bounds(*thresh, b, k) : at::Tensor();
  at::Tensor c = xnor_gemm_cpu(a, b, k);
  if (!thresh) return c;
  return pack_ge_cpu(c, bounds);
}

}  // namespace

TORCH_LIBRARY(bnnctl, m) {
  m.def("pack(Tensor x) -> Tensor");
  m.def("pack_ge(Tensor value, Tensor bound) -> Tensor");
  m.def("conv_threshold(Tensor products, Tensor? correction, int pool, Tensor? direction, Tensor bound) -> Tensor");
  m.def("xnor_gemm(Tensor a, Tensor b, int k) -> Tensor");
  m.def("xnor_conv(Tensor x, Tensor b, int kernel, int padding) -> Tensor");
  m.def("xnor_gemm_paper(Tensor a, Tensor b, int k) -> Tensor");
  m.def("xnor_gemm_csa(Tensor a, Tensor b, int k) -> Tensor");
  m.def("baseline_gemm(Tensor a, Tensor b) -> Tensor");
  m.def("xnor_tc_gemm(Tensor a, Tensor b, int k, Tensor? thresh=None, bool wgmma=False, int config=0) -> Tensor");
  m.def("cpu_isa() -> str", &cpu_isa);
  m.def("set_cpu_isa(str isa) -> str", &set_cpu_isa);
  m.def("supported_cpu_isas() -> str[]", &supported_cpu_isas);
}

TORCH_LIBRARY_IMPL(bnnctl, CPU, m) {
  m.impl("pack", &pack_cpu);
  m.impl("pack_ge", &pack_ge_cpu);
  m.impl("conv_threshold", &conv_threshold_cpu);
  m.impl("xnor_gemm", &xnor_gemm_cpu);
  m.impl("xnor_conv", &xnor_conv_cpu);
  m.impl("xnor_gemm_paper", &xnor_gemm_cpu);  // the CUDA-only variants run the one CPU kernel
  m.impl("xnor_gemm_csa", &xnor_gemm_cpu);
  m.impl("baseline_gemm", &baseline_gemm_cpu);
  m.impl("xnor_tc_gemm", &xnor_tc_gemm_cpu);
}
