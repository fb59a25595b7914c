// The tuned CUDA-core XNOR GEMM (the default `xnor` kernel).
//
// Its speed limit is the POPC unit (16 results per clock per SM on sm_80/sm_90, a quarter of the
// LOP3/IADD3 rate), so everything else is arranged to stay off the critical path:
//  * 64-bit words and a 128x128 block tile, each of the 256 threads owning an 8x8 register tile:
//    per 64-bit word a thread does 64 outputs x (2 LOP3 + 2 POPC + 1 IADD3) against 8 shared-memory
//    loads (LDS.128), so shared-memory bandwidth and issue slots are far from saturated;
//  * double-buffered shared-memory tiles (one __syncthreads per k tile): the next tile's global loads
//    are in flight in registers while the current one is computed;
//  * global loads are coalesced (a warp reads 4 rows x 64 contiguous bytes) and need no alignment, so
//    any k works; tiles are stored transposed ([word][row]) with 4 words of padding, which makes both
//    the transposing stores and the 16-byte compute loads free of bank conflicts;
//  * thread (tx, ty) owns rows 2*ty + {0,1} + 32*q and columns 2*tx + {0,1} + 32*q (q = 0..3), so a
//    warp's B loads and its int2 output stores are contiguous.
// Rows/columns past m/n and words past the end are loaded as zero bits, and bits past k are masked
// off at load time, so ragged shapes and junk padding cost nothing in the inner loop.
#include "bnn_cuda.h"

namespace {

constexpr int kBlockRows = 128;   // BM = BN
constexpr int kTileWords = 8;     // 64-bit words per k tile (512 bits)
constexpr int kThreads = 256;
constexpr int kPad = 4;           // words of padding per shared-memory tile row (bank spreading)
constexpr int kLoadPasses = kBlockRows * kTileWords / kThreads;  // 4 words per thread per operand
constexpr int kRowsPerPass = kThreads / kTileWords;              // 32
constexpr int kThreadTile = 8;    // outputs per thread along each dimension
static_assert(kLoadPasses * kRowsPerPass == kBlockRows, "loader must cover the tile");

__device__ __forceinline__ uint64_t real_bits_mask64(int64_t w, int64_t k) {
  const int64_t bits = k - w * 64;
  return bits >= 64 ? ~0ull : (bits <= 0 ? 0ull : (1ull << bits) - 1ull);
}

// Packed words of rows [row0, row0 + kBlockRows) at word column w, zero outside the matrix.
__device__ __forceinline__ void fetch_tile(const uint64_t* __restrict__ src, int64_t rows, int64_t words,
                                           int64_t k, int64_t row0, int64_t w, int load_row,
                                           uint64_t (&dst)[kLoadPasses]) {
  const uint64_t mask = real_bits_mask64(w, k);
#pragma unroll
  for (int p = 0; p < kLoadPasses; ++p) {
    const int64_t row = row0 + load_row + p * kRowsPerPass;
    dst[p] = (row < rows && w < words) ? (src[row * words + w] & mask) : 0ull;
  }
}

__global__ void __launch_bounds__(kThreads, 2)
xnor_gemm_kernel(const uint64_t* __restrict__ a, const uint64_t* __restrict__ b, int32_t* __restrict__ c,
                 int64_t m, int64_t n, int64_t words, int64_t k) {
  __shared__ __align__(16) uint64_t a_tile[2][kTileWords][kBlockRows + kPad];
  __shared__ __align__(16) uint64_t b_tile[2][kTileWords][kBlockRows + kPad];

  const int tid = threadIdx.x;
  const int load_word = tid % kTileWords, load_row = tid / kTileWords;
  const int tx = tid % 16, ty = tid / 16;
  const int64_t m0 = (int64_t)blockIdx.y * kBlockRows, n0 = (int64_t)blockIdx.x * kBlockRows;

  int disagree[kThreadTile][kThreadTile];
#pragma unroll
  for (int i = 0; i < kThreadTile; ++i)
#pragma unroll
    for (int j = 0; j < kThreadTile; ++j) disagree[i][j] = 0;

  uint64_t a_next[kLoadPasses], b_next[kLoadPasses];
  auto stash = [&](int buf) {
#pragma unroll
    for (int p = 0; p < kLoadPasses; ++p) {
      a_tile[buf][load_word][load_row + p * kRowsPerPass] = a_next[p];
      b_tile[buf][load_word][load_row + p * kRowsPerPass] = b_next[p];
    }
  };

  const int64_t num_tiles = (words + kTileWords - 1) / kTileWords;
  if (num_tiles > 0) {
    fetch_tile(a, m, words, k, m0, load_word, load_row, a_next);
    fetch_tile(b, n, words, k, n0, load_word, load_row, b_next);
    stash(0);
  }
  __syncthreads();

  for (int64_t t = 0; t < num_tiles; ++t) {
    const int buf = (int)(t & 1);
    const bool has_next = t + 1 < num_tiles;
    if (has_next) {
      const int64_t w = (t + 1) * kTileWords + load_word;
      fetch_tile(a, m, words, k, m0, w, load_row, a_next);
      fetch_tile(b, n, words, k, n0, w, load_row, b_next);
    }
    // Not unrolled on purpose: unrolling lets the compiler hoist several words' operands at once and
    // spill past the 128 registers that two resident blocks per SM allow; one word already holds 128
    // independent POPCs, and the other resident warps hide the shared-memory latency.
#pragma unroll 1
    for (int kw = 0; kw < kTileWords; ++kw) {
      uint64_t av[kThreadTile], bv[kThreadTile];
#pragma unroll
      for (int q = 0; q < kThreadTile / 2; ++q) {
        const ulonglong2 x = *reinterpret_cast<const ulonglong2*>(&a_tile[buf][kw][2 * ty + 32 * q]);
        const ulonglong2 y = *reinterpret_cast<const ulonglong2*>(&b_tile[buf][kw][2 * tx + 32 * q]);
        av[2 * q] = x.x; av[2 * q + 1] = x.y;
        bv[2 * q] = y.x; bv[2 * q + 1] = y.y;
      }
#pragma unroll
      for (int i = 0; i < kThreadTile; ++i)
#pragma unroll
        for (int j = 0; j < kThreadTile; ++j) disagree[i][j] += __popcll(av[i] ^ bv[j]);
    }
    // The buffer written here was last read in iteration t - 1, which every thread has finished
    // (the __syncthreads below in t - 1), and it is read again only after the next __syncthreads.
    if (has_next) stash(buf ^ 1);
    __syncthreads();
  }

  const bool pairs_aligned = (n % 2) == 0;  // int2 stores need 8-byte aligned rows
#pragma unroll
  for (int i = 0; i < kThreadTile; ++i) {
    const int64_t row = m0 + 2 * ty + (i & 1) + 32 * (i / 2);
    if (row >= m) continue;
    int32_t* c_row = c + row * n;
#pragma unroll
    for (int q = 0; q < kThreadTile / 2; ++q) {
      const int64_t col = n0 + 2 * tx + 32 * q;
      const int32_t v0 = (int32_t)(k - 2 * (int64_t)disagree[i][2 * q]);
      const int32_t v1 = (int32_t)(k - 2 * (int64_t)disagree[i][2 * q + 1]);
      if (pairs_aligned && col + 1 < n) {
        *reinterpret_cast<int2*>(c_row + col) = make_int2(v0, v1);
      } else {
        if (col < n) c_row[col] = v0;
        if (col + 1 < n) c_row[col + 1] = v1;
      }
    }
  }
}

}  // namespace

extern "C" cudaError_t bnn_xnor_gemm_cuda(const uint64_t* a, const uint64_t* b, int32_t* c, int64_t m, int64_t n,
                                          int64_t words, int64_t k, cudaStream_t stream) {
  if (m <= 0 || n <= 0) return cudaSuccess;
  const int64_t blocks_x = (n + kBlockRows - 1) / kBlockRows, blocks_y = (m + kBlockRows - 1) / kBlockRows;
  if (blocks_x > 0x7fffffff || blocks_y > 65535) return cudaErrorInvalidValue;
  xnor_gemm_kernel<<<dim3((unsigned)blocks_x, (unsigned)blocks_y), kThreads, 0, stream>>>(a, b, c, m, n, words, k);
  return cudaGetLastError();
}
