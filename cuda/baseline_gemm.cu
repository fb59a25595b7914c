// The paper's unoptimised float kernel, the reference point of its run-time figure: the textbook
// shared-memory tiled GEMM with 16x16 tiles and one output per thread. B arrives as (n, k) rows, so its
// tile is stored transposed; the one-column padding keeps that store free of bank conflicts, as the
// paper's (k, n) layout was, so the kernel is as slow as the paper's and no slower.
#include "bnn_cuda.h"

namespace {

constexpr int kTile = 16;

__global__ void __launch_bounds__(kTile * kTile)
baseline_gemm_kernel(const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ c,
                     int64_t m, int64_t n, int64_t k) {
  __shared__ float a_tile[kTile][kTile];      // [row][k]
  __shared__ float b_tile[kTile][kTile + 1];  // [k][col]
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t row = (int64_t)blockIdx.y * kTile + ty;
  const int64_t col = (int64_t)blockIdx.x * kTile + tx;
  const int64_t b_row = (int64_t)blockIdx.x * kTile + ty;  // the B row this thread loads
  float sum = 0.0f;
  for (int64_t k0 = 0; k0 < k; k0 += kTile) {
    const int64_t kk = k0 + tx;
    a_tile[ty][tx] = (row < m && kk < k) ? a[row * k + kk] : 0.0f;
    b_tile[tx][ty] = (b_row < n && kk < k) ? b[b_row * k + kk] : 0.0f;
    __syncthreads();
#pragma unroll
    for (int i = 0; i < kTile; ++i) sum += a_tile[ty][i] * b_tile[i][tx];
    __syncthreads();
  }
  if (row < m && col < n) c[row * n + col] = sum;
}

}  // namespace

extern "C" cudaError_t bnn_baseline_gemm_cuda(const float* a, const float* b, float* c, int64_t m, int64_t n,
                                              int64_t k, cudaStream_t stream) {
  if (m <= 0 || n <= 0) return cudaSuccess;
  const int64_t blocks_x = (n + kTile - 1) / kTile, blocks_y = (m + kTile - 1) / kTile;
  if (blocks_x > 0x7fffffff || blocks_y > 65535) return cudaErrorInvalidValue;
  baseline_gemm_kernel<<<dim3((unsigned)blocks_x, (unsigned)blocks_y), dim3(kTile, kTile), 0, stream>>>(a, b, c, m, n, k);
  return cudaGetLastError();
}
