// XNOR GEMM with carry-save popcounts: fewer POPC instructions than the tuned kernel.
//
// The tuned kernel (xnor_gemm.cu) issues one POPC per 32 bits, and POPC runs at a quarter of the
// LOP3 rate (16 vs 64 per clock per SM on sm_80/sm_90), so POPC is its ceiling. Here every 8 words
// x0..x7 (x = a XOR b, 256 bits) go through a carry-save adder tree first: four full adders (two LOP3
// each: sum = p^q^r, carry = majority) turn x0..x6 into s3 (weight 1), s4 (weight 2) and c4
// (weight 4), so
//     popc(x0) + ... + popc(x7) = popc(s3) + popc(x7) + 2 popc(s4) + 4 popc(c4),
// 4 POPC instead of 8 for 16 LOP3, which keeps the LOP3 and POPC units about equally busy.
//
// Tiling: a 128 (rows of a) x 64 (rows of b) block, 256 threads, each owning 8 x 4 outputs (rows
// ty + 16 i, columns tx + 16 j), k tiles of 512 bits double-buffered in shared memory and filled by
// cp.async (sm_80+) while the previous tile is computed, one __syncthreads per tile; going around the
// registers leaves all 128 of them to the 8 x 4 tile and the carry-save operands. Tiles keep the
// packed row layout ([row][32-bit word], rows padded to 20 words so a warp's 16-byte loads of 16
// different rows are conflict-free). Rows past m/n and words past the end arrive as zero bits (the
// copy's zero fill); bits past k in the last word are copied as they are and their disagreements
// taken out in the epilogue.
#include "bnn_cuda.h"

namespace {

constexpr int kRowsA = 128, kRowsB = 64;  // block tile
constexpr int kTileWords64 = 8;           // k tile: 8 x 64 bits
constexpr int kTileWords = 2 * kTileWords64;
constexpr int kRowStride = kTileWords + 4;  // 32-bit words per shared-memory row (padding: banks)
constexpr int kThreads = 256;
constexpr int kGroup = 8;                 // 32-bit words per carry-save group
constexpr int kRowsPerThread = 8, kColsPerThread = 4;
constexpr int kLoaderRows = kThreads / kTileWords64;  // 32 rows per load pass
static_assert(kRowsA == 16 * kRowsPerThread && kRowsB == 16 * kColsPerThread, "16 x 16 threads");

// d = f(a, b, c) for the 3-input boolean function whose truth table is Lut (bit (a << 2 | b << 1 | c)
// of Lut is f(a, b, c)): one LOP3 instruction on the GPU. The host version evaluates the same table,
// so a CPU test checks the tables below.
template <unsigned Lut>
__host__ __device__ __forceinline__ uint32_t lop3(uint32_t a, uint32_t b, uint32_t c) {
#ifdef __CUDA_ARCH__
  uint32_t d;
  asm("lop3.b32 %0, %1, %2, %3, %4;" : "=r"(d) : "r"(a), "r"(b), "r"(c), "n"(Lut));
  return d;
#else
  uint32_t d = 0;
  for (unsigned i = 0; i < 8; ++i)
    if ((Lut >> i) & 1u) d |= ((i & 4) ? a : ~a) & ((i & 2) ? b : ~b) & ((i & 1) ? c : ~c);
  return d;
#endif
}

// Bitwise full adder: sum = p ^ q ^ r (table 0x96), carry = majority(p, q, r) (0xE8). Written as
// LOP3s because left to itself the compiler shares p ^ q between them and spends three instructions.
__host__ __device__ __forceinline__ void full_add(uint32_t p, uint32_t q, uint32_t r, uint32_t& sum,
                                                  uint32_t& carry) {
  sum = lop3<0x96>(p, q, r);
  carry = lop3<0xE8>(p, q, r);
}

__host__ __device__ __forceinline__ int popcount32(uint32_t x) {
#ifdef __CUDA_ARCH__
  return __popc(x);
#else
  return __builtin_popcount(x);
#endif
}

}  // namespace

// Number of differing bits between a[0..7] and b[0..7] (host-callable so it can be checked on a CPU).
__host__ __device__ __forceinline__ int bnn_disagreements8(const uint32_t* a, const uint32_t* b) {
  uint32_t x[kGroup];
#pragma unroll
  for (int w = 0; w < kGroup; ++w) x[w] = a[w] ^ b[w];
  uint32_t s1, c1, s2, c2, s3, c3, s4, c4;
  full_add(x[0], x[1], x[2], s1, c1);
  full_add(x[3], x[4], x[5], s2, c2);
  full_add(s1, s2, x[6], s3, c3);  // weight 1: s3; weight 2: c1, c2, c3
  full_add(c1, c2, c3, s4, c4);    // weight 2: s4; weight 4: c4
  return popcount32(s3) + popcount32(x[7]) + 2 * popcount32(s4) + 4 * popcount32(c4);
}

namespace {

__device__ __forceinline__ uint64_t real_bits_mask64(int64_t w, int64_t k) {
  const int64_t bits = k - w * 64;
  return bits >= 64 ? ~0ull : (bits <= 0 ? 0ull : (1ull << bits) - 1ull);
}

// 8-byte asynchronous global -> shared copy; with valid == false nothing is read and zeros are written.
__device__ __forceinline__ void copy_async8(void* dst, const void* src, bool valid) {
  const unsigned dst_addr = (unsigned)__cvta_generic_to_shared(dst);
  asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;\n" ::"r"(dst_addr), "l"(src), "r"(valid ? 8 : 0));
}

// Starts copying the k tile whose first 64-bit word is w0 of rows [row0, row0 + Rows) into tile.
template <int Rows>
__device__ __forceinline__ void copy_tile(uint32_t (&tile)[Rows][kRowStride], const uint64_t* __restrict__ src,
                                          int64_t rows, int64_t words, int row0, int64_t w0, int load_row,
                                          int load_word) {
  const int64_t w = w0 + load_word;
#pragma unroll
  for (int p = 0; p < Rows / kLoaderRows; ++p) {
    const int r = load_row + p * kLoaderRows;
    const bool valid = row0 + r < rows && w < words;
    copy_async8(&tile[r][2 * load_word], valid ? src + (int64_t)(row0 + r) * words + w : src, valid);
  }
}

__device__ __forceinline__ void load_group(const uint32_t* row, uint32_t (&dst)[kGroup]) {
  const uint4 lo = *reinterpret_cast<const uint4*>(row), hi = *reinterpret_cast<const uint4*>(row + 4);
  dst[0] = lo.x; dst[1] = lo.y; dst[2] = lo.z; dst[3] = lo.w;
  dst[4] = hi.x; dst[5] = hi.y; dst[6] = hi.z; dst[7] = hi.w;
}

__global__ void __launch_bounds__(kThreads, 2)
xnor_gemm_csa_kernel(const uint64_t* __restrict__ a, const uint64_t* __restrict__ b, int32_t* __restrict__ c,
                     int64_t m, int64_t n, int64_t words, int64_t k) {
  __shared__ __align__(16) uint32_t a_tile[2][kRowsA][kRowStride];
  __shared__ __align__(16) uint32_t b_tile[2][kRowsB][kRowStride];

  const int tid = threadIdx.x;
  const int load_word = tid % kTileWords64, load_row = tid / kTileWords64;
  const int tx = tid % 16, ty = tid / 16;
  const int m0 = blockIdx.y * kRowsA, n0 = blockIdx.x * kRowsB;  // < 2^31: the launcher checks the grid

  int disagree[kRowsPerThread][kColsPerThread];
#pragma unroll
  for (int i = 0; i < kRowsPerThread; ++i)
#pragma unroll
    for (int j = 0; j < kColsPerThread; ++j) disagree[i][j] = 0;

  const int num_tiles = (int)((words + kTileWords64 - 1) / kTileWords64);
  if (num_tiles > 0) {
    copy_tile(a_tile[0], a, m, words, m0, 0, load_row, load_word);
    copy_tile(b_tile[0], b, n, words, n0, 0, load_row, load_word);
    asm volatile("cp.async.commit_group;\n" ::);
  }

  for (int t = 0; t < num_tiles; ++t) {
    const int buf = (int)(t & 1);
    // Tile t has landed for every thread, and every thread is done with tile t - 1, whose buffer the
    // copies of tile t + 1 now overwrite while tile t is computed.
    asm volatile("cp.async.wait_group 0;\n" ::: "memory");
    __syncthreads();
    if (t + 1 < num_tiles) {
      copy_tile(a_tile[buf ^ 1], a, m, words, m0, (int64_t)(t + 1) * kTileWords64, load_row, load_word);
      copy_tile(b_tile[buf ^ 1], b, n, words, n0, (int64_t)(t + 1) * kTileWords64, load_row, load_word);
      asm volatile("cp.async.commit_group;\n" ::);
    }
#pragma unroll 1
    for (int g = 0; g < kTileWords; g += kGroup) {
      uint32_t bw[kColsPerThread][kGroup];
#pragma unroll
      for (int j = 0; j < kColsPerThread; ++j) load_group(&b_tile[buf][tx + 16 * j][g], bw[j]);
#pragma unroll
      for (int i = 0; i < kRowsPerThread; ++i) {
        uint32_t aw[kGroup];
        load_group(&a_tile[buf][ty + 16 * i][g], aw);
#pragma unroll
        for (int j = 0; j < kColsPerThread; ++j) disagree[i][j] += bnn_disagreements8(aw, bw[j]);
      }
    }
  }

  // The copies took the last word whole: remove the disagreements among its bits past k.
  const uint64_t junk = words > 0 ? ~real_bits_mask64(words - 1, k) : 0ull;
  if (junk) {
    uint64_t a_last[kRowsPerThread], b_last[kColsPerThread];
#pragma unroll
    for (int i = 0; i < kRowsPerThread; ++i) {
      const int64_t row = m0 + ty + 16 * i;
      a_last[i] = row < m ? a[row * words + words - 1] : 0ull;
    }
#pragma unroll
    for (int j = 0; j < kColsPerThread; ++j) {
      const int64_t col = n0 + tx + 16 * j;
      b_last[j] = col < n ? b[col * words + words - 1] : 0ull;
    }
#pragma unroll
    for (int i = 0; i < kRowsPerThread; ++i)
#pragma unroll
      for (int j = 0; j < kColsPerThread; ++j) disagree[i][j] -= __popcll((a_last[i] ^ b_last[j]) & junk);
  }

#pragma unroll
  for (int i = 0; i < kRowsPerThread; ++i) {
    const int64_t row = m0 + ty + 16 * i;
    if (row >= m) continue;
#pragma unroll
    for (int j = 0; j < kColsPerThread; ++j) {
      const int64_t col = n0 + tx + 16 * j;
      if (col < n) c[row * n + col] = (int32_t)(k - 2 * (int64_t)disagree[i][j]);
    }
  }
}

}  // namespace

extern "C" cudaError_t bnn_xnor_gemm_csa_cuda(const uint64_t* a, const uint64_t* b, int32_t* c, int64_t m, int64_t n,
                                              int64_t words, int64_t k, cudaStream_t stream) {
  if (m <= 0 || n <= 0) return cudaSuccess;
  const int64_t blocks_x = (n + kRowsB - 1) / kRowsB, blocks_y = (m + kRowsA - 1) / kRowsA;
  // 32-bit row and tile indices inside the kernel (they keep it within 128 registers, spill-free).
  if (n > 0x7fffff00 || blocks_y > 65535 || words > 0x7fffffff) return cudaErrorInvalidValue;
  xnor_gemm_csa_kernel<<<dim3((unsigned)blocks_x, (unsigned)blocks_y), kThreads, 0, stream>>>(a, b, c, m, n, words, k);
  return cudaGetLastError();
}
