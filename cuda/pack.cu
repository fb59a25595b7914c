// Bit packing on the GPU: one warp per 64-bit word. Each lane reads one value of each 32-value half
// (coalesced loads) and __ballot_sync gathers the 32 bits of the half in lane order, which is exactly
// the LSB-first bit order of the packed layout. The same kernel packs signs (pack) and comparisons with
// per-column bounds (the threshold form), through the Bit functor.
#include "bnn_cuda.h"

namespace {

constexpr int kWarpsPerBlock = 8;
constexpr int kMaxGridRows = 65535;  // gridDim.y limit; larger matrices loop over rows

// x >= 0 decided on the bits, as on the CPU (cpu/xnor_isa.h): +0.0, -0.0 and positive numbers up to +inf
// are +1, negative numbers and NaNs are -1, and no flush-to-zero mode can make a negative denormal +1.
__device__ __forceinline__ bool nonnegative(float x) {
  const unsigned u = __float_as_uint(x);
  return u <= 0x7f800000u || u == 0x80000000u;
}

__device__ __forceinline__ bool nonnegative(double x) {
  const unsigned long long u = static_cast<unsigned long long>(__double_as_longlong(x));
  return u <= 0x7ff0000000000000ull || u == 0x8000000000000000ull;
}

template <typename T>
struct SignBit {
  const T* __restrict__ x;
  __device__ __forceinline__ bool operator()(int64_t row, int64_t col, int64_t k) const {
    return nonnegative(x[row * k + col]);
  }
};

template <typename T>
struct GeBit {
  const T* __restrict__ value;
  const T* __restrict__ bound;
  __device__ __forceinline__ bool operator()(int64_t row, int64_t col, int64_t n) const {
    return value[row * n + col] >= bound[col];
  }
};

template <typename Bit>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
pack_rows_kernel(const Bit bit, int64_t rows, int64_t k, int64_t words, uint64_t* __restrict__ out) {
  const int lane = threadIdx.x & 31;
  const int64_t word = (int64_t)blockIdx.x * kWarpsPerBlock + (threadIdx.x >> 5);
  if (word >= words) return;  // whole warps leave together: word is the same for all 32 lanes
  const int64_t col0 = word * 64 + lane, col1 = col0 + 32;
  for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
    const bool bit0 = col0 < k && bit(row, col0, k);
    const bool bit1 = col1 < k && bit(row, col1, k);
    const unsigned lo = __ballot_sync(0xffffffffu, bit0);
    const unsigned hi = __ballot_sync(0xffffffffu, bit1);
    if (lane == 0) out[row * words + word] = ((uint64_t)hi << 32) | lo;
  }
}

template <typename Bit>
cudaError_t launch_pack(const Bit bit, int64_t rows, int64_t k, uint64_t* out, cudaStream_t stream) {
  const int64_t words = (k + 63) / 64;
  if (rows <= 0 || words <= 0) return cudaSuccess;
  const int64_t blocks_x = (words + kWarpsPerBlock - 1) / kWarpsPerBlock;
  if (blocks_x > 0x7fffffff) return cudaErrorInvalidValue;
  const dim3 grid((unsigned)blocks_x, (unsigned)(rows < kMaxGridRows ? rows : kMaxGridRows));
  pack_rows_kernel<<<grid, kWarpsPerBlock * 32, 0, stream>>>(bit, rows, k, words, out);
  return cudaGetLastError();
}

}  // namespace

extern "C" cudaError_t bnn_pack_rows_cuda(const float* x, int64_t rows, int64_t k, uint64_t* out,
                                          cudaStream_t stream) {
  return launch_pack(SignBit<float>{x}, rows, k, out, stream);
}

extern "C" cudaError_t bnn_pack_rows_f64_cuda(const double* x, int64_t rows, int64_t k, uint64_t* out,
                                              cudaStream_t stream) {
  return launch_pack(SignBit<double>{x}, rows, k, out, stream);
}

extern "C" cudaError_t bnn_pack_ge_i32_cuda(const int32_t* value, const int32_t* bound, int64_t rows, int64_t n,
                                            uint64_t* out, cudaStream_t stream) {
  return launch_pack(GeBit<int32_t>{value, bound}, rows, n, out, stream);
}

extern "C" cudaError_t bnn_pack_ge_f32_cuda(const float* value, const float* bound, int64_t rows, int64_t n,
                                            uint64_t* out, cudaStream_t stream) {
  return launch_pack(GeBit<float>{value, bound}, rows, n, out, stream);
}
