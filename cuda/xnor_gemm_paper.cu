// The paper's XNOR kernel: the baseline's 16x16 tiling applied to packed 32-bit words, one output per
// thread, popc(a ^ b) counting the disagreeing signs, result k - 2 * popc. Kept deliberately
// paper-like (no register tiling) so the bench shows what the tuned kernel adds.
#include "bnn_cuda.h"

namespace {

constexpr int kTile = 16;  // rows, columns and 32-bit words per tile

// Bits of word w that lie inside the k real columns (callers may pass packed rows with junk padding).
__device__ __forceinline__ uint32_t real_bits_mask32(int64_t w, int64_t k) {
  const int64_t bits = k - w * 32;
  return bits >= 32 ? 0xffffffffu : (bits <= 0 ? 0u : (1u << bits) - 1u);
}

__global__ void __launch_bounds__(kTile * kTile)
xnor_gemm_paper_kernel(const uint32_t* __restrict__ a, const uint32_t* __restrict__ b, int32_t* __restrict__ c,
                       int64_t m, int64_t n, int64_t words, int64_t k) {
  __shared__ uint32_t a_tile[kTile][kTile];      // [row][word]
  __shared__ uint32_t b_tile[kTile][kTile + 1];  // [word][col]
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t row = (int64_t)blockIdx.y * kTile + ty;
  const int64_t col = (int64_t)blockIdx.x * kTile + tx;
  const int64_t b_row = (int64_t)blockIdx.x * kTile + ty;
  int disagree = 0;
  for (int64_t w0 = 0; w0 < words; w0 += kTile) {
    const int64_t w = w0 + tx;
    const uint32_t mask = real_bits_mask32(w, k);
    a_tile[ty][tx] = (row < m && w < words) ? (a[row * words + w] & mask) : 0u;
    b_tile[tx][ty] = (b_row < n && w < words) ? (b[b_row * words + w] & mask) : 0u;
    __syncthreads();
#pragma unroll
    for (int i = 0; i < kTile; ++i) disagree += __popc(a_tile[ty][i] ^ b_tile[i][tx]);
    __syncthreads();
  }
  if (row < m && col < n) c[row * n + col] = (int32_t)(k - 2 * (int64_t)disagree);
}

}  // namespace

extern "C" cudaError_t bnn_xnor_gemm_paper_cuda(const uint32_t* a, const uint32_t* b, int32_t* c, int64_t m,
                                                int64_t n, int64_t words32, int64_t k, cudaStream_t stream) {
  if (m <= 0 || n <= 0) return cudaSuccess;
  const int64_t blocks_x = (n + kTile - 1) / kTile, blocks_y = (m + kTile - 1) / kTile;
  if (blocks_x > 0x7fffffff || blocks_y > 65535) return cudaErrorInvalidValue;
  xnor_gemm_paper_kernel<<<dim3((unsigned)blocks_x, (unsigned)blocks_y), dim3(kTile, kTile), 0, stream>>>(
      a, b, c, m, n, words32, k);
  return cudaGetLastError();
}
