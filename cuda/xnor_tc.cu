// 1-bit tensor-core GEMM for sm_80+ (native AND+POPC on sm_90): see xnor_tc.h for the contract and
// XNOR_TC.md for the design and the numbers it is judged by.
//
// Shape of the computation
//   block tile 128 (M) x 256 (N), 8 warps as 2 x 4, warp tile 64 x 64 = 4 x 8 mma tiles of 16 x 8;
//   K streams through shared memory 512 bits (16 words) per row and stage, 4 stages of cp.async;
//   each stage is two m16n8k256 steps. Epilogue applies the popcount correction in registers.
//
// Fragments: ldmatrix moves bits, and the K order inside a stage is ours to choose
//   The PTX fragment layout of m16n8k256 .b1 gives lane (g = lane / 4, t = lane % 4):
//     a0: A row g,   k in [32t, 32t+32)        a1: A row g+8, same k
//     a2: A row g,   k in [128+32t, ...+32)    a3: A row g+8, same k
//     b0: B col g,   k in [32t, 32t+32)        b1: B col g,   k in [128+32t, ...+32)
//     c0, c1: row g,   cols 2t, 2t+1           c2, c3: row g+8, cols 2t, 2t+1
//   A popcount of a & b does not care which physical K word sits in which k slot, as long as A and B
//   put the same word in the same slot. A stage row is 16 words = 4 segments of 16 bytes; mma step s
//   (of 2 per stage) uses segments 2s and 2s+1: slot [32t..] <- word t of segment 2s, slot
//   [128+32t..] <- word t of segment 2s+1, for A and B alike.
//   ldmatrix.x4 (plain .b16, no transpose) hands lane (g, t) the 32-bit word t of row g of each of
//   four 8-row x 16-byte matrices, which is exactly that: for A the matrices are (rows 0-7, seg 2s),
//   (rows 8-15, seg 2s), (rows 0-7, seg 2s+1), (rows 8-15, seg 2s+1) -> a0..a3 in register order;
//   for B (cols 0-7, seg 2s), (cols 0-7, seg 2s+1), (cols 8-15, seg 2s), (cols 8-15, seg 2s+1) ->
//   b0, b1 of two adjacent n tiles. bnnctl/kernels/tensorcore.py emulates exactly this assignment.
//
// Shared memory without bank conflicts: an XOR swizzle of the 16-byte segments
//   A stage row is 64 bytes, so the 8 rows one ldmatrix phase reads (16 bytes each, same segment)
//   would fall on 2 bank groups 4 times over. Segment s of row r is stored at s ^ ((r >> 1) & 3):
//   rows 0..7 then cover 8 distinct 16-byte bank groups. The 16-byte cp.async writes (8 lanes = two
//   whole rows per phase) stay conflict-free because the swizzle only permutes within a row.
//
// Boundaries
//   Rows past M or N and words past K_words32 are zero-filled by cp.async's src-size operand, so the
//   K padding up to the stage is zero bits (an AND with zero counts nothing) and out-of-range rows
//   compute garbage-free zeros that the epilogue does not store.
#include "xnor_tc.h"

#include <cuda_runtime.h>

namespace {

constexpr int kBlockM = 128;
constexpr int kBlockN = 256;
constexpr int kWarpM = 64;
constexpr int kWarpN = 64;
constexpr int kWarpsN = kBlockN / kWarpN;                      // 4
constexpr int kThreads = 32 * (kBlockM / kWarpM) * kWarpsN;    // 256
constexpr int kMmaTilesM = kWarpM / 16;                        // 4
constexpr int kMmaTilesN = kWarpN / 8;                         // 8
constexpr int kStageWords = 16;                                // 512 bits of K per row per stage
constexpr int kStages = 4;
constexpr int kStageWordsA = kBlockM * kStageWords;
constexpr int kStageWordsB = kBlockN * kStageWords;
constexpr int kSmemBytes = kStages * (kStageWordsA + kStageWordsB) * 4;  // 96 KiB
constexpr int64_t kMaxK = int64_t{1} << 29;                     // 4 * popc must fit in int32

constexpr int kSegmentsPerRow = kStageWords / 4;                // 16-byte segments
static_assert(kStageWords == 16, "two mma steps of two segments each per stage");
static_assert((kStages & (kStages - 1)) == 0, "stage index uses a power of two");

// Physical 16-byte segment of logical segment `seg` in stage row `row` (see the header comment).
__device__ __forceinline__ int swizzle(int row, int seg) { return seg ^ ((row >> 1) & 3); }

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte global->shared copy; src_bytes = 0 writes zeros and reads nothing.
__device__ __forceinline__ void cp_async_16(uint32_t* dst, const uint32_t* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
               "r"(valid ? 16 : 0)
               : "memory");
}

// 4-byte variant for rows whose length or base is not 16-byte aligned.
__device__ __forceinline__ void cp_async_4(uint32_t* dst, const uint32_t* src, bool valid) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
               "r"(valid ? 4 : 0)
               : "memory");
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}

__device__ __forceinline__ void mma_b1_and(int (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.and.popc "
      "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Copies one operand's share of each stage: kRows rows x 16 words. Thread `tid` always copies segment
// tid % 4 of rows tid / 4 + 64 * i, so its source pointer, destination and row guards are computed
// once; a stage only adds 16 words to the source and checks that its segment is still inside K.
template <int kRows, bool kAligned16>
struct StageLoader {
  static constexpr int kRowsPerPass = kThreads / kSegmentsPerRow;  // 64
  static constexpr int kPasses = kRows / kRowsPerPass;
  static_assert(kRows % kRowsPerPass == 0, "every thread copies the same number of segments");

  const uint32_t* fallback;  // any valid address, for zero-filled copies that read nothing
  const uint32_t* first;     // this thread's segment of its first row at stage 0
  size_t pass_stride;        // words between this thread's rows
  int first_word;            // K word of this thread's segment at stage 0
  int dst_offset;            // words, within a stage, already swizzled
  unsigned rows_ok;          // bit i: row of pass i is inside the matrix

  __device__ __forceinline__ StageLoader(const uint32_t* src, int row0, int rows_total, int k_words) {
    const int row = threadIdx.x / kSegmentsPerRow;
    const int seg = threadIdx.x % kSegmentsPerRow;
    fallback = src;
    rows_ok = 0;
#pragma unroll
    for (int i = 0; i < kPasses; ++i) rows_ok |= static_cast<unsigned>(row0 + row + i * kRowsPerPass < rows_total) << i;
    // Rows past the end are never read; clamp so the pointer arithmetic stays inside the allocation.
    first = src + static_cast<size_t>(row0 + row < rows_total ? row0 + row : 0) * k_words + seg * 4;
    pass_stride = static_cast<size_t>(kRowsPerPass) * k_words;
    first_word = seg * 4;
    // (row + 64 i) >> 1 & 3 does not depend on i, so one swizzled offset serves every pass.
    dst_offset = row * kStageWords + swizzle(row, seg) * 4;
  }

  __device__ __forceinline__ void load(uint32_t* stage, int kt, int k_words) const {
    const int word = first_word + kt * kStageWords;
#pragma unroll
    for (int i = 0; i < kPasses; ++i) {
      uint32_t* d = stage + dst_offset + i * kRowsPerPass * kStageWords;
      const bool row_ok = (rows_ok >> i) & 1u;
      const uint32_t* s = first + i * pass_stride + kt * kStageWords;
      if (kAligned16) {
        // k_words % 4 == 0 here, so a segment is either wholly inside the row or wholly past its end.
        const bool ok = row_ok && word < k_words;
        cp_async_16(d, ok ? s : fallback, ok);
      } else {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const bool ok = row_ok && word + e < k_words;
          cp_async_4(d + e, ok ? s + e : fallback, ok);
        }
      }
    }
  }
};

enum class Epilogue { kInt32, kThresholdBits };

template <bool kAligned16, Epilogue kEpilogue>
__global__ void __launch_bounds__(kThreads, 1)
    xnor_tc_kernel(const uint32_t* __restrict__ a, const uint32_t* __restrict__ b,
                   const int32_t* __restrict__ a_popc, const int32_t* __restrict__ b_popc,
                   const float* __restrict__ thresh, void* __restrict__ out, int M, int N, int k_words,
                   int k_real) {
  extern __shared__ __align__(16) uint32_t smem[];
  uint32_t* const smem_a = smem;                           // [kStages][kBlockM][kStageWords]
  uint32_t* const smem_b = smem + kStages * kStageWordsA;  // [kStages][kBlockN][kStageWords]

  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int warp_m = warp / kWarpsN;
  const int warp_n = warp % kWarpsN;
  const int g = lane >> 2;
  const int t = lane & 3;
  const int m0 = blockIdx.y * kBlockM;
  const int n0 = blockIdx.x * kBlockN;
  const int k_tiles = (k_words + kStageWords - 1) / kStageWords;

  // One commit per stage even when there is nothing left to load keeps the group count in step with
  // the tile index, so wait_group<kStages - 2> always means "tile kt has landed".
  const StageLoader<kBlockM, kAligned16> loader_a(a, m0, M, k_words);
  const StageLoader<kBlockN, kAligned16> loader_b(b, n0, N, k_words);
  auto load_stage = [&](int kt) {
    if (kt < k_tiles) {
      const int buf = kt & (kStages - 1);
      loader_a.load(smem_a + buf * kStageWordsA, kt, k_words);
      loader_b.load(smem_b + buf * kStageWordsB, kt, k_words);
    }
    cp_async_commit();
  };

#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) load_stage(s);

  int acc[kMmaTilesM][kMmaTilesN][4];
#pragma unroll
  for (int i = 0; i < kMmaTilesM; ++i)
#pragma unroll
    for (int j = 0; j < kMmaTilesN; ++j)
#pragma unroll
      for (int r = 0; r < 4; ++r) acc[i][j][r] = 0;

  // ldmatrix row addresses of this lane: lanes 8q..8q+7 point at the rows of matrix q (see header).
  // For A, matrix q is rows (q & 1) * 8 + rr of the mma tile at segment 2s + (q >> 1); for B, columns
  // (q >> 1) * 8 + rr of an n-tile pair at segment 2s + (q & 1). The swizzle depends on rr only,
  // because tile offsets are multiples of 8 rows.
  const int q = lane >> 3;
  const int rr = lane & 7;
  uint32_t a_lane[2], b_lane[2];  // byte offsets within a stage, per mma step
#pragma unroll
  for (int s = 0; s < 2; ++s) {
    const int a_row = warp_m * kWarpM + (q & 1) * 8 + rr;
    const int b_row = warp_n * kWarpN + (q >> 1) * 8 + rr;
    a_lane[s] = (a_row * kStageWords + swizzle(rr, 2 * s + (q >> 1)) * 4) * 4;
    b_lane[s] = (b_row * kStageWords + swizzle(rr, 2 * s + (q & 1)) * 4) * 4;
  }
  const uint32_t smem_a_addr = smem_addr(smem_a);
  const uint32_t smem_b_addr = smem_addr(smem_b);

  for (int kt = 0; kt < k_tiles; ++kt) {
    cp_async_wait<kStages - 2>();
    // After this barrier every thread's copies of tile kt are visible, and every warp is done reading
    // tile kt - 1, whose buffer the next load reuses.
    __syncthreads();
    load_stage(kt + kStages - 1);

    const int buf = kt & (kStages - 1);
    const uint32_t sa = smem_a_addr + buf * kStageWordsA * 4;
    const uint32_t sb = smem_b_addr + buf * kStageWordsB * 4;
#pragma unroll
    for (int s = 0; s < 2; ++s) {
      uint32_t af[kMmaTilesM][4], bf[kMmaTilesN / 2][4];
#pragma unroll
      for (int i = 0; i < kMmaTilesM; ++i) ldmatrix_x4(af[i], sa + a_lane[s] + i * 16 * kStageWords * 4);
#pragma unroll
      for (int jp = 0; jp < kMmaTilesN / 2; ++jp) ldmatrix_x4(bf[jp], sb + b_lane[s] + jp * 16 * kStageWords * 4);
#pragma unroll
      for (int i = 0; i < kMmaTilesM; ++i)
#pragma unroll
        for (int j = 0; j < kMmaTilesN; ++j)
          mma_b1_and(acc[i][j], af[i], bf[j / 2][2 * (j % 2)], bf[j / 2][2 * (j % 2) + 1]);
    }
  }
  cp_async_wait<0>();

  // Epilogue: dot = 4 * popc(a & b) + (K - 2 * popc(a)) - 2 * popc(b).
  const int row_base = m0 + warp_m * kWarpM + g;
  const int col_base = n0 + warp_n * kWarpN + 2 * t;
  int col_term[kMmaTilesN][2];
  float thr[kMmaTilesN][2];  // threshold epilogue only
#pragma unroll
  for (int j = 0; j < kMmaTilesN; ++j)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int col = col_base + j * 8 + e;
      col_term[j][e] = col < N ? -2 * b_popc[col] : 0;
      if constexpr (kEpilogue == Epilogue::kThresholdBits) thr[j][e] = col < N ? thresh[col] : 0.0f;
    }

  if constexpr (kEpilogue == Epilogue::kInt32) {
    int32_t* const c = static_cast<int32_t*>(out);
    // With an even N and an 8-byte aligned base, (row * N + even col) is 8-byte aligned.
    const bool pair_stores = N % 2 == 0 && reinterpret_cast<uintptr_t>(c) % 8 == 0;
#pragma unroll
    for (int i = 0; i < kMmaTilesM; ++i)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int row = row_base + i * 16 + h * 8;
        if (row >= M) continue;
        const int row_term = k_real - 2 * a_popc[row];
        int32_t* const c_row = c + static_cast<size_t>(row) * N;
#pragma unroll
        for (int j = 0; j < kMmaTilesN; ++j) {
          const int col = col_base + j * 8;
          const int v0 = 4 * acc[i][j][2 * h] + row_term + col_term[j][0];
          const int v1 = 4 * acc[i][j][2 * h + 1] + row_term + col_term[j][1];
          if (pair_stores && col + 1 < N) {
            *reinterpret_cast<int2*>(c_row + col) = make_int2(v0, v1);
          } else {
            if (col < N) c_row[col] = v0;
            if (col + 1 < N) c_row[col + 1] = v1;
          }
        }
      }
  } else {
    // A warp's 64 columns are exactly one 64-bit output word (n0 and the warp offset are multiples of 64).
    uint64_t* const bits = static_cast<uint64_t*>(out);
    const int words_per_row = (N + 63) / 64;
    const int word = (n0 + warp_n * kWarpN) / 64;
#pragma unroll
    for (int i = 0; i < kMmaTilesM; ++i)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int row = row_base + i * 16 + h * 8;
        const int row_term = row < M ? k_real - 2 * a_popc[row] : 0;
        uint64_t mine = 0;
#pragma unroll
        for (int j = 0; j < kMmaTilesN; ++j)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int col = col_base + j * 8 + e;
            const int v = 4 * acc[i][j][2 * h + e] + row_term + col_term[j][e];
            const bool bit = col < N && static_cast<float>(v) >= thr[j][e];
            mine |= static_cast<uint64_t>(bit) << (j * 8 + 2 * t + e);
          }
        // The four lanes of a quad hold disjoint bits of the same row: OR them together.
        mine |= __shfl_xor_sync(0xffffffffu, mine, 1);
        mine |= __shfl_xor_sync(0xffffffffu, mine, 2);
        if (t == 0 && row < M && word < words_per_row) bits[static_cast<size_t>(row) * words_per_row + word] = mine;
      }
  }
}

__global__ void row_popcount_kernel(const uint32_t* __restrict__ x, int rows, int k_words, int k_real,
                                    int32_t* __restrict__ out) {
  const int lane = threadIdx.x & 31;
  const int row = blockIdx.x * (blockDim.x / 32) + (threadIdx.x >> 5);
  if (row >= rows) return;
  const uint32_t* r = x + static_cast<size_t>(row) * k_words;
  const int full_words = k_real / 32;
  int count = 0;
  for (int w = lane; w < full_words; w += 32) count += __popc(r[w]);
  // Bits past k are not counted even if a caller left junk there.
  if (lane == 0 && k_real % 32 != 0) count += __popc(r[full_words] & ((1u << (k_real % 32)) - 1u));
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) count += __shfl_xor_sync(0xffffffffu, count, offset);
  if (lane == 0) out[row] = count;
}

bool valid_problem(int64_t m, int64_t n, int64_t k_words, int64_t k) {
  return m >= 0 && n >= 0 && k_words >= 0 && k >= 0 && k <= kMaxK && m <= INT32_MAX && n <= INT32_MAX &&
         k_words <= INT32_MAX && k_words * 32 >= k;
}

template <Epilogue kEpilogue>
cudaError_t launch(const uint32_t* a, const uint32_t* b, const int32_t* a_popc, const int32_t* b_popc,
                   const float* thresh, void* out, int64_t m, int64_t n, int64_t k_words, int64_t k,
                   cudaStream_t stream) {
  if (!valid_problem(m, n, k_words, k)) return cudaErrorInvalidValue;
  if (m == 0 || n == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>((n + kBlockN - 1) / kBlockN), static_cast<unsigned>((m + kBlockM - 1) / kBlockM));
  if (grid.y > 65535u) return cudaErrorInvalidValue;
  const bool aligned16 = k_words % 4 == 0 && reinterpret_cast<uintptr_t>(a) % 16 == 0 &&
                         reinterpret_cast<uintptr_t>(b) % 16 == 0;
  auto kernel = aligned16 ? xnor_tc_kernel<true, kEpilogue> : xnor_tc_kernel<false, kEpilogue>;
  // More than 48 KiB of dynamic shared memory must be opted into, per kernel.
  const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes);
  if (err != cudaSuccess) return err;
  kernel<<<grid, kThreads, kSmemBytes, stream>>>(a, b, a_popc, b_popc, thresh, out, static_cast<int>(m),
                                                 static_cast<int>(n), static_cast<int>(k_words), static_cast<int>(k));
  return cudaGetLastError();
}

}  // namespace

extern "C" cudaError_t bnn_row_popcount_cuda(const uint32_t* x, int64_t rows, int64_t words32, int64_t k,
                                             int32_t* out, cudaStream_t stream) {
  if (rows < 0 || rows > INT32_MAX || words32 < 0 || words32 > INT32_MAX || k < 0 || k > words32 * 32)
    return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  constexpr int kRowsPerBlock = 8;  // one warp per row
  const unsigned blocks = static_cast<unsigned>((rows + kRowsPerBlock - 1) / kRowsPerBlock);
  row_popcount_kernel<<<blocks, 32 * kRowsPerBlock, 0, stream>>>(x, static_cast<int>(rows), static_cast<int>(words32),
                                                                 static_cast<int>(k), out);
  return cudaGetLastError();
}

extern "C" cudaError_t bnn_xnor_tc_gemm_cuda(const uint32_t* a, const uint32_t* b, const int32_t* a_popc,
                                             const int32_t* b_popc, int32_t* c, int64_t m, int64_t n,
                                             int64_t words32, int64_t k, cudaStream_t stream) {
  return launch<Epilogue::kInt32>(a, b, a_popc, b_popc, nullptr, c, m, n, words32, k, stream);
}

extern "C" cudaError_t bnn_xnor_tc_gemm_threshold_cuda(const uint32_t* a, const uint32_t* b, const int32_t* a_popc,
                                                       const int32_t* b_popc, const float* thresh,
                                                       uint64_t* out_bits, int64_t m, int64_t n, int64_t words32,
                                                       int64_t k, cudaStream_t stream) {
  return launch<Epilogue::kThresholdBits>(a, b, a_popc, b_popc, thresh, out_bits, m, n, words32, k, stream);
}
