// CUDA implementations of the bnnctl ops: argument checks, output allocation and the kernel launch
// on the current stream; the kernels themselves are plain CUDA (cuda/*.cu, declared in cuda/bnn_cuda.h).
// Compiled only into the CUDA build of the extension.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cuda_runtime_api.h>

#include "../bnn_cuda.h"
#include "../xnor_tc.h"
#include "op_checks.h"

#include <optional>

namespace {

void check_launch(cudaError_t err, const char* kernel) {
  TORCH_CHECK(err == cudaSuccess, "bnnctl ", kernel, " kernel launch failed: ", cudaGetErrorString(err));
}

// float32 and float64 are packed from their own bits (a float64 is never rounded to float32 first).
at::Tensor pack_cuda(const at::Tensor& x) {
  bnn_ops::check_pack_input(x);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t rows = x.size(0), k = x.size(1);
  at::Tensor out = at::empty({rows, bnn_ops::words_for(k)}, x.options().dtype(at::kLong));
  uint64_t* dst = reinterpret_cast<uint64_t*>(out.data_ptr<int64_t>());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if (x.scalar_type() == at::kDouble) {
    check_launch(bnn_pack_rows_f64_cuda(x.data_ptr<double>(), rows, k, dst, stream), "pack");
  } else {
    check_launch(bnn_pack_rows_cuda(x.data_ptr<float>(), rows, k, dst, stream), "pack");
  }
  return out;
}

// Packed bits of (value[r, j] >= bound[j]): int32 or float32, compared exactly in that type.
at::Tensor pack_ge_cuda(const at::Tensor& value, const at::Tensor& bound) {
  bnn_ops::check_pack_ge_input(value, bound);
  const c10::cuda::CUDAGuard guard(value.device());
  const int64_t rows = value.size(0), n = value.size(1);
  at::Tensor out = at::empty({rows, bnn_ops::words_for(n)}, value.options().dtype(at::kLong));
  uint64_t* dst = reinterpret_cast<uint64_t*>(out.data_ptr<int64_t>());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if (value.scalar_type() == at::kInt) {
    check_launch(bnn_pack_ge_i32_cuda(value.data_ptr<int32_t>(), bound.data_ptr<int32_t>(), rows, n, dst, stream),
                 "pack_ge");
  } else {
    check_launch(bnn_pack_ge_f32_cuda(value.data_ptr<float>(), bound.data_ptr<float>(), rows, n, dst, stream),
                 "pack_ge");
  }
  return out;
}

const uint64_t* words64(const at::Tensor& t) { return reinterpret_cast<const uint64_t*>(t.data_ptr<int64_t>()); }
// The 64-bit words read as twice as many 32-bit words, in the same bit order (little-endian).
const uint32_t* words32(const at::Tensor& t) { return reinterpret_cast<const uint32_t*>(t.data_ptr<int64_t>()); }

// The XNOR GEMM ops differ only in the kernel they launch: launch(c, stream) -> cudaError_t.
template <typename Launch>
at::Tensor xnor_gemm_with(const at::Tensor& a, const at::Tensor& b, int64_t k, const char* name, Launch launch) {
  bnn_ops::check_packed_pair(a, b, k);
  const c10::cuda::CUDAGuard guard(a.device());
  at::Tensor c = at::empty({a.size(0), b.size(0)}, a.options().dtype(at::kInt));
  check_launch(launch(c.data_ptr<int32_t>(), c10::cuda::getCurrentCUDAStream()), name);
  return c;
}

at::Tensor xnor_gemm_cuda(const at::Tensor& a, const at::Tensor& b, int64_t k) {
  return xnor_gemm_with(a, b, k, "xnor_gemm", [&](int32_t* c, cudaStream_t stream) {
    return bnn_xnor_gemm_cuda(words64(a), words64(b), c, a.size(0), b.size(0), a.size(1), k, stream);
  });
}

at::Tensor xnor_gemm_csa_cuda(const at::Tensor& a, const at::Tensor& b, int64_t k) {
  return xnor_gemm_with(a, b, k, "xnor_gemm_csa", [&](int32_t* c, cudaStream_t stream) {
    return bnn_xnor_gemm_csa_cuda(words64(a), words64(b), c, a.size(0), b.size(0), a.size(1), k, stream);
  });
}

at::Tensor xnor_gemm_paper_cuda(const at::Tensor& a, const at::Tensor& b, int64_t k) {
  return xnor_gemm_with(a, b, k, "xnor_gemm_paper", [&](int32_t* c, cudaStream_t stream) {
    return bnn_xnor_gemm_paper_cuda(words32(a), words32(b), c, a.size(0), b.size(0), 2 * a.size(1), k, stream);
  });
}

at::Tensor baseline_gemm_cuda(const at::Tensor& a, const at::Tensor& b) {
  bnn_ops::check_float_pair(a, b);
  const c10::cuda::CUDAGuard guard(a.device());
  const int64_t m = a.size(0), n = b.size(0), k = a.size(1);
  at::Tensor c = at::empty({m, n}, a.options());
  check_launch(bnn_baseline_gemm_cuda(a.data_ptr<float>(), b.data_ptr<float>(), c.data_ptr<float>(), m, n, k,
                                      c10::cuda::getCurrentCUDAStream()),
               "baseline_gemm");
  return c;
}

// The tensor-core XNOR GEMM: row popcounts, then AND+POPC on tensor cores with the correction fused in
// (int32 out), or compared with per-column thresholds (packed bits out, like pack()); mma.sync in one of its
// configurations (xnor_tc.h), or wgmma where the build has sm_90a code.
at::Tensor xnor_tc_gemm_cuda(const at::Tensor& a, const at::Tensor& b, int64_t k,
                             const std::optional<at::Tensor>& thresh, bool wgmma, int64_t config) {
  bnn_ops::check_packed_pair(a, b, k);
  const c10::cuda::CUDAGuard guard(a.device());
  // int32 boundaries (bit = dot >= bound), from float thresholds converted exactly on the host.
  const at::Tensor bounds = thresh ? bnn_ops::threshold_bounds(*thresh, b, k) : at::Tensor();
  TORCH_CHECK(!wgmma || bnn_xnor_tc_wgmma_available(),
              "bnnctl::xnor_tc_gemm: this build has no wgmma kernel for this GPU (it needs an sm_90 GPU and "
              "TORCH_CUDA_ARCH_LIST=9.0a when the extension is built)");
  TORCH_CHECK(config >= 0 && config < bnn_xnor_tc_config_count() && (!wgmma || config == 0),
              "bnnctl::xnor_tc_gemm: no kernel configuration ", config, wgmma ? " for wgmma (it has config 0 only)" : "",
              " (there are ", bnn_xnor_tc_config_count(), ")");
  const int instruction = wgmma ? BNN_TC_WGMMA : BNN_TC_MMA_SYNC;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t m = a.size(0), n = b.size(0), words32 = 2 * a.size(1);
  const uint32_t* pa = reinterpret_cast<const uint32_t*>(a.data_ptr<int64_t>());
  const uint32_t* pb = reinterpret_cast<const uint32_t*>(b.data_ptr<int64_t>());
  at::Tensor popc = at::empty({m + n}, a.options().dtype(at::kInt));
  int32_t* a_popc = popc.data_ptr<int32_t>();
  check_launch(bnn_row_popcount_cuda(pa, m, words32, k, a_popc, stream), "row_popcount");
  check_launch(bnn_row_popcount_cuda(pb, n, words32, k, a_popc + m, stream), "row_popcount");
  if (!thresh) {
    at::Tensor c = at::empty({m, n}, a.options().dtype(at::kInt));
    check_launch(bnn_xnor_tc_gemm_cuda(pa, pb, a_popc, a_popc + m, c.data_ptr<int32_t>(), m, n, words32, k,
                                       instruction, static_cast<int>(config), stream),
                 "xnor_tc_gemm");
    return c;
  }
  at::Tensor bits = at::empty({m, bnn_ops::words_for(n)}, a.options().dtype(at::kLong));
  check_launch(bnn_xnor_tc_gemm_threshold_cuda(pa, pb, a_popc, a_popc + m, bounds.data_ptr<int32_t>(),
                                               reinterpret_cast<uint64_t*>(bits.data_ptr<int64_t>()), m, n, words32,
                                               k, instruction, static_cast<int>(config), stream),
               "xnor_tc_gemm");
  return bits;
}

}  // namespace

TORCH_LIBRARY_IMPL(bnnctl, CUDA, m) {
  m.impl("pack", &pack_cuda);
  m.impl("pack_ge", &pack_ge_cuda);
  m.impl("xnor_gemm", &xnor_gemm_cuda);
  m.impl("xnor_gemm_paper", &xnor_gemm_paper_cuda);
  m.impl("xnor_gemm_csa", &xnor_gemm_csa_cuda);
  m.impl("baseline_gemm", &baseline_gemm_cuda);
  m.impl("xnor_tc_gemm", &xnor_tc_gemm_cuda);
}
