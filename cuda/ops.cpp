// The torch glue: registers the bnnctl ops with the dispatcher (TORCH_LIBRARY namespace `bnnctl`) and
// implements them for CPU tensors on torch's thread pool. The CUDA implementations live in
// ops_cuda.cpp, which is compiled only when CUDA is usable, so this file never needs CUDA.
// Only light ATen headers here (not torch/extension.h): this is the slow file to compile.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <optional>
#include <string>
#include <vector>

#include "cpu_kernels.h"
#include "train_kernels.h"
#include "ops_common.h"

namespace {

// The instruction set the CPU kernels use: the best this CPU has unless set_cpu_isa chose another
// (the tests run every supported one).
std::atomic<int> g_isa{-1};

bnn_cpu::Isa current_isa() {
  int isa = g_isa.load();
  if (isa < 0) {
    isa = (int)bnn_cpu::best_isa();
    g_isa.store(isa);
  }
  return (bnn_cpu::Isa)isa;
}

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

// Runs block(m0, m1, n0, n1) over an (m, n) output cut into tiles of tile_m x tile_n, in parallel.
// Within a tile the kernels sweep a's rows past the tile's rows of b, which stay in the L1 cache.
template <typename Block>
void for_each_tile(int64_t m, int64_t n, int64_t tile_m, int64_t tile_n, const Block& block) {
  const int64_t tiles_m = (m + tile_m - 1) / tile_m, tiles_n = (n + tile_n - 1) / tile_n;
  at::parallel_for(0, tiles_m * tiles_n, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t m0 = (t % tiles_m) * tile_m, n0 = (t / tiles_m) * tile_n;
      block(m0, std::min(m, m0 + tile_m), n0, std::min(n, n0 + tile_n));
    }
  });
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

// Copies the rows of packed (rows, words) into panels of `width` rows (bnn_cpu::pack_panels), in parallel.
at::Tensor pack_panels_cpu(const at::Tensor& packed, int64_t k, int width) {
  const int64_t rows = packed.size(0), words = packed.size(1), panels = (rows + width - 1) / width;
  at::Tensor out = at::empty({panels * words * width}, packed.options());
  const uint64_t* src = reinterpret_cast<const uint64_t*>(packed.data_ptr<int64_t>());
  uint64_t* dst = reinterpret_cast<uint64_t*>(out.data_ptr<int64_t>());
  at::parallel_for(0, panels, std::max<int64_t>(1, pack_grain(words * 64) / width), [&](int64_t p0, int64_t p1) {
    bnn_cpu::pack_panels(src, rows, words, k, width, p0, p1, dst);
  });
  return out;
}

at::Tensor xnor_gemm_cpu(const at::Tensor& a, const at::Tensor& b, int64_t k) {
  bnn_ops::check_packed_pair(a, b, k);
  const int64_t m = a.size(0), n = b.size(0), words = a.size(1);
  at::Tensor c = at::empty({m, n}, a.options().dtype(at::kInt));
  if (m == 0 || n == 0) return c;
  const bnn_cpu::Isa isa = current_isa();
  const bnn_cpu::PanelShape shape = bnn_cpu::panel_shape(isa);
  const at::Tensor a_panels = pack_panels_cpu(a, k, shape.rows);
  const at::Tensor b_panels = pack_panels_cpu(b, k, shape.cols);
  const uint64_t* pa = reinterpret_cast<const uint64_t*>(a_panels.data_ptr<int64_t>());
  const uint64_t* pb = reinterpret_cast<const uint64_t*>(b_panels.data_ptr<int64_t>());
  int32_t* pc = c.data_ptr<int32_t>();
  // A tile's a panels (about 256 KB: a quarter of a current L2 cache) are re-read from the L2 cache for
  // every b panel, which stays in the L1 cache while they stream past it.
  const int64_t row_bytes = std::max<int64_t>(words * 8, 1);
  const int64_t tile_m = std::clamp<int64_t>((256 * 1024 / row_bytes) / shape.rows, 1, 64) * shape.rows;
  // Narrow tiles of b (four panels): many more tiles than threads, so that a ragged last one unbalances
  // little; wider ones gained nothing measurable at 10000 x 4096 x 4096.
  const int64_t tile_n = 4 * shape.cols;
  for_each_tile(m, n, tile_m, tile_n, [&](int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
    bnn_cpu::xnor_panels(isa, pa, pb, words, k, m0, m1, n0, n1, pc, n);
  });
  return c;
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

// ---- the fused training step (cuda/train_kernels.h) -------------------------------------------------

void check_step_tensor(const at::Tensor& t, const at::Tensor& param, const char* what) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous(), "bnnctl fused step: ", what,
              " must be a contiguous float32 CPU tensor");
  TORCH_CHECK(t.numel() == param.numel(), "bnnctl fused step: ", what, " has ", t.numel(), " elements, the parameter ",
              param.numel());
}

float* binary_ptr(const std::optional<at::Tensor>& binary, const at::Tensor& param) {
  if (!binary) return nullptr;
  check_step_tensor(*binary, param, "binary");
  return binary->data_ptr<float>();
}

int8_t* binary_i8_ptr(const std::optional<at::Tensor>& binary, const at::Tensor& param) {
  if (!binary) return nullptr;
  TORCH_CHECK(binary->device().is_cpu() && binary->scalar_type() == at::kChar && binary->is_contiguous() &&
                  binary->numel() == param.numel(),
              "bnnctl fused step: binary_i8 must be a contiguous int8 CPU tensor shaped like the parameter");
  return binary->data_ptr<int8_t>();
}

// Blocks small enough that the binarization loops re-read the updated weights from the L2 cache.
template <typename Block>
void for_each_chunk(int64_t n, const Block& block) {
  at::parallel_for(0, n, 16384, [&](int64_t i0, int64_t i1) { block(i0, i1 - i0); });
}

void shift_adamax_cpu(at::Tensor& param, const at::Tensor& grad, at::Tensor& exp_avg, at::Tensor& exp_inf, double beta1,
                      double beta2, double eps, double step, double clip, const std::optional<at::Tensor>& binary,
                      const std::optional<at::Tensor>& binary_i8) {
  check_step_tensor(param, param, "param");
  check_step_tensor(grad, param, "grad");
  check_step_tensor(exp_avg, param, "exp_avg");
  check_step_tensor(exp_inf, param, "exp_inf");
  float *p = param.data_ptr<float>(), *m = exp_avg.data_ptr<float>(), *v = exp_inf.data_ptr<float>();
  const float* g = grad.data_ptr<float>();
  float* b = binary_ptr(binary, param);
  int8_t* b8 = binary_i8_ptr(binary_i8, param);
  for_each_chunk(param.numel(), [&](int64_t i, int64_t n) {
    bnn_train::shift_adamax(p + i, g + i, m + i, v + i, n, (float)(1.0 - beta1), (float)beta2, (float)eps, (float)step,
                            (float)clip, b ? b + i : nullptr, b8 ? b8 + i : nullptr);
  });
}

void adam_cpu(at::Tensor& param, const at::Tensor& grad, at::Tensor& exp_avg, at::Tensor& exp_avg_sq, double beta1,
              double beta2, double eps, double step, double bias2_sqrt, double clip,
              const std::optional<at::Tensor>& binary, const std::optional<at::Tensor>& binary_i8) {
  check_step_tensor(param, param, "param");
  check_step_tensor(grad, param, "grad");
  check_step_tensor(exp_avg, param, "exp_avg");
  check_step_tensor(exp_avg_sq, param, "exp_avg_sq");
  float *p = param.data_ptr<float>(), *m = exp_avg.data_ptr<float>(), *v = exp_avg_sq.data_ptr<float>();
  const float* g = grad.data_ptr<float>();
  float* b = binary_ptr(binary, param);
  int8_t* b8 = binary_i8_ptr(binary_i8, param);
  for_each_chunk(param.numel(), [&](int64_t i, int64_t n) {
    bnn_train::adam(p + i, g + i, m + i, v + i, n, (float)(1.0 - beta1), (float)beta2, (float)(1.0 - beta2), (float)eps,
                    (float)step, (float)bias2_sqrt, (float)clip, b ? b + i : nullptr, b8 ? b8 + i : nullptr);
  });
}

void clip_binarize_cpu(at::Tensor& param, double clip, const std::optional<at::Tensor>& binary,
                       const std::optional<at::Tensor>& binary_i8) {
  check_step_tensor(param, param, "param");
  float* p = param.data_ptr<float>();
  float* b = binary_ptr(binary, param);
  int8_t* b8 = binary_i8_ptr(binary_i8, param);
  for_each_chunk(param.numel(), [&](int64_t i, int64_t n) {
    bnn_train::clip_binarize(p + i, n, (float)clip, b ? b + i : nullptr, b8 ? b8 + i : nullptr);
  });
}

at::Tensor ap2_cpu(const at::Tensor& x) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat, "bnnctl::ap2_nonnegative expects float32 on the CPU");
  at::Tensor src = x.contiguous();
  at::Tensor out = at::empty(src.sizes(), src.options());
  const float* s = src.data_ptr<float>();
  float* d = out.data_ptr<float>();
  for_each_chunk(src.numel(), [&](int64_t i, int64_t n) {
    for (int64_t j = 0; j < n; ++j) d[i + j] = bnn_train::ap2_nonnegative(s[i + j]);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(bnnctl, m) {
  m.def("pack(Tensor x) -> Tensor");
  m.def("pack_ge(Tensor value, Tensor bound) -> Tensor");
  m.def("conv_threshold(Tensor products, Tensor? correction, int pool, Tensor? direction, Tensor bound) -> Tensor");
  m.def("xnor_gemm(Tensor a, Tensor b, int k) -> Tensor");
  m.def("xnor_gemm_paper(Tensor a, Tensor b, int k) -> Tensor");
  m.def("xnor_gemm_csa(Tensor a, Tensor b, int k) -> Tensor");
  m.def("baseline_gemm(Tensor a, Tensor b) -> Tensor");
  m.def("xnor_tc_gemm(Tensor a, Tensor b, int k, Tensor? thresh=None, bool wgmma=False, int config=0) -> Tensor");
  m.def("cpu_isa() -> str", &cpu_isa);
  m.def("set_cpu_isa(str isa) -> str", &set_cpu_isa);
  m.def("supported_cpu_isas() -> str[]", &supported_cpu_isas);
  m.def("shift_adamax_(Tensor(a!) param, Tensor grad, Tensor(b!) exp_avg, Tensor(c!) exp_inf, float beta1, "
        "float beta2, float eps, float step, float clip, Tensor(d!)? binary, Tensor(e!)? binary_i8) -> ()");
  m.def("adam_(Tensor(a!) param, Tensor grad, Tensor(b!) exp_avg, Tensor(c!) exp_avg_sq, float beta1, float beta2, "
        "float eps, float step, float bias2_sqrt, float clip, Tensor(d!)? binary, Tensor(e!)? binary_i8) -> ()");
  m.def("clip_binarize_(Tensor(a!) param, float clip, Tensor(b!)? binary, Tensor(c!)? binary_i8) -> ()");
  m.def("ap2_nonnegative(Tensor x) -> Tensor");
}

TORCH_LIBRARY_IMPL(bnnctl, CPU, m) {
  m.impl("pack", &pack_cpu);
  m.impl("pack_ge", &pack_ge_cpu);
  m.impl("conv_threshold", &conv_threshold_cpu);
  m.impl("xnor_gemm", &xnor_gemm_cpu);
  m.impl("xnor_gemm_paper", &xnor_gemm_cpu);  // the CUDA-only variants run the one CPU kernel
  m.impl("xnor_gemm_csa", &xnor_gemm_cpu);
  m.impl("baseline_gemm", &baseline_gemm_cpu);
  m.impl("xnor_tc_gemm", &xnor_tc_gemm_cpu);
  m.impl("shift_adamax_", &shift_adamax_cpu);
  m.impl("adam_", &adam_cpu);
  m.impl("clip_binarize_", &clip_binarize_cpu);
  m.impl("ap2_nonnegative", &ap2_cpu);
}
