// Bit packing on the GPU: one warp per 64-bit word. Each lane reads one float of each 32-float half
// (coalesced 128-byte loads) and __ballot_sync gathers the 32 sign bits of the half in lane order,
// which is exactly the LSB-first bit order of the packed layout.
#include "bnn_cuda.h"

namespace {

constexpr int kWarpsPerBlock = 8;
constexpr int kMaxGridRows = 65535;  // gridDim.y limit; larger matrices loop over rows

__global__ void __launch_bounds__(kWarpsPerBlock * 32)
pack_rows_kernel(const float* __restrict__ x, int64_t rows, int64_t k, int64_t words, uint64_t* __restrict__ out) {
  const int lane = threadIdx.x & 31;
  const int64_t word = (int64_t)blockIdx.x * kWarpsPerBlock + (threadIdx.x >> 5);
  if (word >= words) return;  // whole warps leave together: word is the same for all 32 lanes
  const int64_t col0 = word * 64 + lane, col1 = col0 + 32;
  for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
    const float* src = x + row * k;
    const bool bit0 = col0 < k && src[col0] >= 0.0f;  // -0.0f >= 0.0f is true: sign(-0) = +1
    const bool bit1 = col1 < k && src[col1] >= 0.0f;
    const unsigned lo = __ballot_sync(0xffffffffu, bit0);
    const unsigned hi = __ballot_sync(0xffffffffu, bit1);
    if (lane == 0) out[row * words + word] = ((uint64_t)hi << 32) | lo;
  }
}

}  // namespace

extern "C" cudaError_t bnn_pack_rows_cuda(const float* x, int64_t rows, int64_t k, uint64_t* out,
                                          cudaStream_t stream) {
  const int64_t words = (k + 63) / 64;
  if (rows <= 0 || words <= 0) return cudaSuccess;
  const int64_t blocks_x = (words + kWarpsPerBlock - 1) / kWarpsPerBlock;
  if (blocks_x > 0x7fffffff) return cudaErrorInvalidValue;
  const dim3 grid((unsigned)blocks_x, (unsigned)(rows < kMaxGridRows ? rows : kMaxGridRows));
  pack_rows_kernel<<<grid, kWarpsPerBlock * 32, 0, stream>>>(x, rows, k, words, out);
  return cudaGetLastError();
}
