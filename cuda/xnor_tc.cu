// 1-bit tensor-core GEMM for sm_80+ (native AND+POPC on sm_90): see xnor_tc.h for the contract and
// XNOR_TC.md for the design and the numbers it is judged by. Two kernels share the pipeline and the
// epilogue: xnor_tc_kernel (mma.sync, any sm_80+) and xnor_tc_wgmma_kernel (wgmma, sm_90a only).
//
// Shape of the computation (mma.sync; the "base" configuration below, the one measured first)
//   block tile 128 (M) x 256 (N), 8 warps as 2 x 4, warp tile 64 x 64 = 4 x 8 mma tiles of 16 x 8;
//   K streams through shared memory 512 bits (16 words) per row and stage, 4 stages of cp.async;
//   each stage is two m16n8k256 steps. Epilogue applies the popcount correction in registers.
//
// Configurations (BNN_TC_MMA_CONFIGS below; the op picks one by index, bnnctl/kernels/tensorcore.py
//   CONFIGS names them in the same order and its model follows every layout they imply)
//   The warp tile stays 64 x 64 in all of them: 128 accumulators per thread is what fits 255 registers.
//   What varies: the block tile (and so the thread count), K bits per stage (512 or 1024: 2 or 4 mma
//   steps between barriers), the number of stages, blocks per SM (__launch_bounds__), fragment double
//   buffering (the ldmatrix loads of the next mma step, across the stage boundary too, are issued before
//   the mma of the current one, CUTLASS-style, so the tensor cores do not wait on shared memory after
//   each barrier), and the epilogue's store policy (st.global.cs: evict-first, so the 268 MB of
//   int32 output at 8192^3 do not push the 17 MB of packed operands out of L2). XNOR_TC.md says why each
//   might win. A 1024-bit stage row is 128 bytes = 8 segments; its swizzle is s ^ (r & 7) (below).
//
// Fragments: ldmatrix moves bits, and the K order inside a stage is ours to choose
//   The PTX fragment layout of m16n8k256 .b1 gives lane (g = lane / 4, t = lane % 4):
//     a0: A row g,   k in [32t, 32t+32)        a1: A row g+8, same k
//     a2: A row g,   k in [128+32t, ...+32)    a3: A row g+8, same k
//     b0: B col g,   k in [32t, 32t+32)        b1: B col g,   k in [128+32t, ...+32)
//     c0, c1: row g,   cols 2t, 2t+1           c2, c3: row g+8, cols 2t, 2t+1
//   A popcount of a & b does not care which physical K word sits in which k slot, as long as A and B
//   put the same word in the same slot. A 512-bit stage row is 16 words = 4 segments of 16 bytes (1024
//   bits: 8 segments); mma step s (2 or 4 per stage) uses segments 2s and 2s+1: slot [32t..] <- word t
//   of segment 2s, slot [128+32t..] <- word t of segment 2s+1, for A and B alike.
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
//   With 1024-bit stages a row is 128 bytes (8 segments) and would put all 8 rows on one bank group;
//   s ^ (r & 7) spreads them, and a cp.async phase (8 lanes = one whole row) stays conflict-free.
//
// Boundaries
//   Rows past M or N and words past words32 are zero-filled by cp.async's src-size operand, so the
//   K padding up to the stage is zero bits (an AND with zero counts nothing) and out-of-range rows
//   compute zeros that the epilogue does not store.
//
// The wgmma variant (sm_90a)
//   Same block tile and stages; each of the two warpgroups computes 64 x 256 with two
//   wgmma.m64n256k256 (b1, AND+POPC) per stage, both operands read by the tensor cores straight from
//   shared memory through matrix descriptors. The stage is stored as "core matrices" (8 rows x 16
//   bytes, 128 contiguous bytes), no swizzle: 16-byte segment s of row r at byte
//   (r / 8) * 512 + s * 128 + (r % 8) * 16. For K-major operands without swizzling the descriptor's
//   leading byte offset is the step between K-adjacent core matrices (128) and its stride byte offset
//   the step between 8-row groups (512); mma step s starts at segment 2s. wgmma's accumulator layout
//   per warp (rows 16w + g, + 8; columns 8j + 2t, + 1) is mma.sync's, so the epilogue is shared. One
//   wgmma group stays in flight while the next stage is issued, so loads run two stages ahead.
#include "xnor_tc.h"

#include <cuda_runtime.h>

#include <atomic>

// wgmma exists only for the architecture-specific sm_90a target; elsewhere (other targets, the host
// pass) the wgmma kernel is an empty shell and the launcher refuses it (wgmma_compiled_probe says which).
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define BNN_WGMMA 1
#else
#define BNN_WGMMA 0
#endif

namespace {

constexpr int64_t kMaxK = int64_t{1} << 29;  // 4 * popc must fit in int32
constexpr int kSharedBytesPerBlockMax = 227 * 1024;  // sm_90 (sm_80: 163 KiB; base and 2cta fit both)
constexpr int kSharedBytesPerSm = 228 * 1024;        // sm_90, including 1 KiB the system keeps per block

// One configuration of the mma.sync kernel (see the header). Warp tile 64 x 64 = 4 x 8 mma tiles.
template <int kBlockM_, int kBlockN_, int kStageBits, int kStages_, int kBlocksPerSm_, bool kFragmentDoubleBuffer_,
          bool kStreamingStores_>
struct MmaConfig {
  static constexpr int kBlockM = kBlockM_;
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kStageWords = kStageBits / 32;  // 32-bit words of K per row per stage
  static constexpr int kSegmentsPerRow = kStageWords / 4;  // 16-byte segments
  static constexpr int kSteps = kStageWords / 8;           // m16n8k256 steps per stage
  static constexpr int kStages = kStages_;
  static constexpr int kBlocksPerSm = kBlocksPerSm_;
  static constexpr bool kFragmentDoubleBuffer = kFragmentDoubleBuffer_;
  static constexpr bool kStreamingStores = kStreamingStores_;
  static constexpr int kWarpM = 64;
  static constexpr int kWarpN = 64;
  static constexpr int kWarpsN = kBlockN / kWarpN;
  static constexpr int kThreads = 32 * (kBlockM / kWarpM) * kWarpsN;  // one warp per warp tile
  static constexpr int kMmaTilesM = kWarpM / 16;
  static constexpr int kMmaTilesN = kWarpN / 8;
  static constexpr int kStageWordsA = kBlockM * kStageWords;
  static constexpr int kStageWordsB = kBlockN * kStageWords;
  static constexpr int kSmemBytes = kStages * (kStageWordsA + kStageWordsB) * 4;

  static_assert(kBlockM % kWarpM == 0 && kBlockN % kWarpN == 0, "whole warp tiles per block");
  static_assert(kSegmentsPerRow == 4 || kSegmentsPerRow == 8, "the swizzle covers 64- and 128-byte rows");
  static_assert(kStages >= 2, "the pipeline loads one stage while the warps read another");
  static_assert(!kFragmentDoubleBuffer || kSteps % 2 == 0, "double buffers alternate within a stage");
  static_assert(kSmemBytes <= kSharedBytesPerBlockMax, "stages exceed a block's shared memory");
  static_assert(kBlocksPerSm * (kSmemBytes + 1024) <= kSharedBytesPerSm, "blocks per SM exceed its shared memory");
  // 128 accumulators + fragments need ~210 registers; the register file (64 K) must hold them for every block.
  static_assert(kBlocksPerSm * kThreads <= 256, "more than 256 threads per SM cannot keep 255 registers each");
};

// The configurations, by index (the op's `config`, 0 = the default; tensorcore.py CONFIGS in the same order,
// which tests/test_tensorcore.py checks against kConfigInfo):
//   name, block M, block N, K bits per stage, stages, blocks per SM, fragment double buffering, streaming stores
#define BNN_TC_MMA_CONFIGS(X)                        \
  X(base, 128, 256, 512, 4, 1, false, false)         \
  X(fdb, 128, 256, 512, 4, 1, true, false)           \
  X(fdb_k1024, 128, 256, 1024, 3, 1, true, false)    \
  X(fdb_2cta, 128, 128, 512, 4, 2, true, false)      \
  X(fdb_cs, 128, 256, 512, 4, 1, true, true)

#define BNN_TC_DECLARE_CONFIG(name, bm, bn, bits, stages, blocks, fdb, cs) \
  using Config_##name = MmaConfig<bm, bn, bits, stages, blocks, fdb, cs>;
BNN_TC_MMA_CONFIGS(BNN_TC_DECLARE_CONFIG)
#undef BNN_TC_DECLARE_CONFIG

// Host-side description of each configuration (tests compare it with tensorcore.py's table).
struct ConfigInfo {
  const char* name;
  int block_m, block_n, stage_bits, stages, blocks_per_sm, threads, smem_bytes;
  bool fragment_double_buffer, streaming_stores;
};
#define BNN_TC_CONFIG_INFO(name, bm, bn, bits, stages, blocks, fdb, cs) \
  ConfigInfo{#name, bm, bn, bits, stages, blocks, Config_##name::kThreads, Config_##name::kSmemBytes, fdb, cs},
constexpr ConfigInfo kConfigInfo[] = {BNN_TC_MMA_CONFIGS(BNN_TC_CONFIG_INFO)};
#undef BNN_TC_CONFIG_INFO
constexpr int kConfigCount = sizeof(kConfigInfo) / sizeof(kConfigInfo[0]);

// The wgmma kernel shares the base configuration's block tile, stages and threads.
using WgmmaConfig = Config_base;

// Buffer of stage kt: a mask for power-of-two stage counts (the base kernel's code), else a remainder.
template <int kStages>
__device__ __forceinline__ int stage_buffer(int kt) {
  if constexpr ((kStages & (kStages - 1)) == 0) {
    return kt & (kStages - 1);
  } else {
    return kt % kStages;
  }
}

// ---- shared memory layouts of a stage (offsets in 32-bit words) ----------------------------------

// mma.sync: rows of kSegments x 4 words; segment s of row r stored at s ^ ((r >> 1) & 3) for 4 segments,
// s ^ (r & 7) for 8 (see the header): the 8 rows of an ldmatrix phase then hit 8 distinct bank groups.
template <int kSegments>
struct SwizzledRows {
  static constexpr int kRowShift = kSegments == 4 ? 1 : 0;  // rows sharing a 128-byte line: 2 or 1
  __device__ __forceinline__ static int swizzle(int row, int seg) {
    return seg ^ ((row >> kRowShift) & (kSegments - 1));
  }
  __device__ __forceinline__ static int offset(int row, int seg) {
    return row * (kSegments * 4) + swizzle(row, seg) * 4;
  }
  // Copy assignment: kSegments lanes per row, so 8 lanes write 128 contiguous bytes (two rows or one).
  __device__ __forceinline__ static int copy_row(int tid) { return tid / kSegments; }
  __device__ __forceinline__ static int copy_seg(int tid) { return tid % kSegments; }
};

// ---- PTX wrappers -----------------------------------------------------------------------------------

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

// ---- loading stages -----------------------------------------------------------------------------------

// Copies one operand's share of each stage: kRows rows x kStageWords words. Thread `tid` always copies
// segment Layout::copy_seg(tid) of rows Layout::copy_row(tid) + kRowsPerPass i, so its source pointer,
// destination and row guards are computed once; a stage only adds kStageWords words to the source and
// checks its segment against K.
template <typename Cfg, int kRows, bool kAligned16, typename Layout>
struct StageLoader {
  static constexpr int kRowsPerPass = Cfg::kThreads / Cfg::kSegmentsPerRow;  // 64 in the base configuration
  static constexpr int kPasses = kRows / kRowsPerPass;
  static_assert(kRows % kRowsPerPass == 0, "every thread copies the same number of segments");
  static_assert(kRowsPerPass % 8 == 0, "the swizzle repeats every 8 rows");
  static_assert(kPasses <= 32, "rows_ok has one bit per pass");

  const uint32_t* fallback;  // any valid address, for zero-filled copies that read nothing
  const uint32_t* first;     // this thread's segment of its first row at stage 0
  size_t pass_stride;        // words between this thread's rows
  int first_word;            // K word of this thread's segment at stage 0
  int dst_offset;            // words, within a stage
  unsigned rows_ok;          // bit i: row of pass i is inside the matrix

  __device__ __forceinline__ StageLoader(const uint32_t* src, int row0, int rows_total, int k_words) {
    const int row = Layout::copy_row(threadIdx.x);
    const int seg = Layout::copy_seg(threadIdx.x);
    fallback = src;
    rows_ok = 0;
#pragma unroll
    for (int i = 0; i < kPasses; ++i) rows_ok |= static_cast<unsigned>(row0 + row + i * kRowsPerPass < rows_total) << i;
    // Rows past the end are never read; clamp so the pointer arithmetic stays inside the allocation.
    first = src + static_cast<size_t>(row0 + row < rows_total ? row0 + row : 0) * k_words + seg * 4;
    pass_stride = static_cast<size_t>(kRowsPerPass) * k_words;
    first_word = seg * 4;
    dst_offset = Layout::offset(row, seg);
  }

  __device__ __forceinline__ void load(uint32_t* stage, int kt, int k_words) const {
    const int word = first_word + kt * Cfg::kStageWords;
#pragma unroll
    for (int i = 0; i < kPasses; ++i) {
      // Both layouts place row + kRowsPerPass at kRowsPerPass rows' worth of words further, same swizzle
      // (kRowsPerPass is a multiple of 8).
      uint32_t* d = stage + dst_offset + i * kRowsPerPass * Cfg::kStageWords;
      const bool row_ok = (rows_ok >> i) & 1u;
      const uint32_t* s = first + i * pass_stride + kt * Cfg::kStageWords;
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

// Both operands of a block: stage kt of A (kBlockM rows) and B (kBlockN rows) into buffer kt % kStages.
// One commit per call, even when nothing is left to load, keeps the cp.async group count in step with the
// tile index, so wait_group<n> always means "all but the last n tiles have landed".
template <typename Cfg, bool kAligned16, typename Layout>
struct StagePipeline {
  StageLoader<Cfg, Cfg::kBlockM, kAligned16, Layout> a;
  StageLoader<Cfg, Cfg::kBlockN, kAligned16, Layout> b;
  uint32_t* smem_a;
  uint32_t* smem_b;
  int k_words;
  int k_tiles;

  __device__ __forceinline__ StagePipeline(const uint32_t* a_src, const uint32_t* b_src, uint32_t* smem, int m0,
                                           int n0, int M, int N, int k_words_)
      : a(a_src, m0, M, k_words_),
        b(b_src, n0, N, k_words_),
        smem_a(smem),
        smem_b(smem + Cfg::kStages * Cfg::kStageWordsA),
        k_words(k_words_),
        k_tiles((k_words_ + Cfg::kStageWords - 1) / Cfg::kStageWords) {}

  __device__ __forceinline__ void load(int kt) const {
    if (kt < k_tiles) {
      const int buf = stage_buffer<Cfg::kStages>(kt);
      a.load(smem_a + buf * Cfg::kStageWordsA, kt, k_words);
      b.load(smem_b + buf * Cfg::kStageWordsB, kt, k_words);
    }
    cp_async_commit();
  }
};

// ---- epilogue -------------------------------------------------------------------------------------------

enum class Epilogue { kInt32, kThresholdBits };

// A global store, plain or with the evict-first hint (st.global.cs) that keeps a streamed output from
// displacing the operands in L2.
template <bool kStreaming, typename T>
__device__ __forceinline__ void store_global(T* p, T value) {
  if constexpr (kStreaming) {
    __stcs(p, value);
  } else {
    *p = value;
  }
}

// Stores a warp's accumulators laid out as kTilesM x kTilesN tiles of m16n8 (c0, c1: row g, columns 2t,
// 2t+1; c2, c3: row g + 8): tile (i, j) covers rows row_base + 16 i (+ 8) and columns col_base + 8 j
// (+ 1), where row_base includes g and col_base includes 2t. Applies dot = 4 popc(a & b) + (k - 2 popc(a))
// - 2 popc(b) and writes int32, or bit(dot >= bound[col]) packed 64 columns to a word (col_base - 2t
// must then be a multiple of 64 and kTilesN a multiple of 8). kStreaming: evict-first stores.
template <int kTilesM, int kTilesN, Epilogue kEpilogue, bool kStreaming>
__device__ __forceinline__ void store_tiles(const int (&acc)[kTilesM][kTilesN][4], int row_base, int col_base, int t,
                                            int M, int N, int k_real, const int32_t* __restrict__ a_popc,
                                            const int32_t* __restrict__ b_popc, const int32_t* __restrict__ bound,
                                            void* __restrict__ out) {
  int row_term[kTilesM][2];
#pragma unroll
  for (int i = 0; i < kTilesM; ++i)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = row_base + i * 16 + h * 8;
      row_term[i][h] = row < M ? k_real - 2 * a_popc[row] : 0;
    }

  if constexpr (kEpilogue == Epilogue::kInt32) {
    int32_t* const c = static_cast<int32_t*>(out);
    // With an even N and an 8-byte aligned base, (row * N + even col) is 8-byte aligned.
    const bool pair_stores = N % 2 == 0 && reinterpret_cast<uintptr_t>(c) % 8 == 0;
#pragma unroll
    for (int j = 0; j < kTilesN; ++j) {
      const int col = col_base + j * 8;
      const int col_term0 = col < N ? -2 * b_popc[col] : 0;
      const int col_term1 = col + 1 < N ? -2 * b_popc[col + 1] : 0;
#pragma unroll
      for (int i = 0; i < kTilesM; ++i)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int row = row_base + i * 16 + h * 8;
          if (row >= M) continue;
          int32_t* const c_row = c + static_cast<size_t>(row) * N;
          const int v0 = 4 * acc[i][j][2 * h] + row_term[i][h] + col_term0;
          const int v1 = 4 * acc[i][j][2 * h + 1] + row_term[i][h] + col_term1;
          if (pair_stores && col + 1 < N) {
            store_global<kStreaming>(reinterpret_cast<int2*>(c_row + col), make_int2(v0, v1));
          } else {
            if (col < N) store_global<kStreaming>(c_row + col, v0);
            if (col + 1 < N) store_global<kStreaming>(c_row + col + 1, v1);
          }
        }
    }
  } else {
    static_assert(kTilesN % 8 == 0, "whole 64-bit output words per warp");
    uint64_t* const bits = static_cast<uint64_t*>(out);
    const int words_per_row = (N + 63) / 64;
#pragma unroll
    for (int jw = 0; jw < kTilesN / 8; ++jw) {
      const int word = (col_base - 2 * t) / 64 + jw;
      uint64_t mine[kTilesM][2] = {};
#pragma unroll
      for (int jj = 0; jj < 8; ++jj)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int j = jw * 8 + jj;
          const int col = col_base + j * 8 + e;
          const int col_term = col < N ? -2 * b_popc[col] : 0;
          const int bnd = col < N ? bound[col] : 0;  // integer boundary: exact for every dot product
#pragma unroll
          for (int i = 0; i < kTilesM; ++i)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
              const int v = 4 * acc[i][j][2 * h + e] + row_term[i][h] + col_term;
              const bool bit = col < N && v >= bnd;
              mine[i][h] |= static_cast<uint64_t>(bit) << (jj * 8 + 2 * t + e);
            }
        }
#pragma unroll
      for (int i = 0; i < kTilesM; ++i)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          // The four lanes of a quad hold disjoint bits of the same row: OR them together.
          uint64_t v = mine[i][h];
          v |= __shfl_xor_sync(0xffffffffu, v, 1);
          v |= __shfl_xor_sync(0xffffffffu, v, 2);
          const int row = row_base + i * 16 + h * 8;
          if (t == 0 && row < M && word < words_per_row)
            store_global<kStreaming>(reinterpret_cast<unsigned long long*>(bits) + static_cast<size_t>(row) * words_per_row + word,
                                     static_cast<unsigned long long>(v));
        }
    }
  }
}

// ---- the mma.sync kernel --------------------------------------------------------------------------------

// One mma step's operands of a warp: A fragments of its kMmaTilesM m-tiles, B fragments of its n-tile pairs.
template <typename Cfg>
struct Fragments {
  uint32_t a[Cfg::kMmaTilesM][4];
  uint32_t b[Cfg::kMmaTilesN / 2][4];

  // ldmatrix of mma step `step` of the stage at shared byte addresses sa / sb; a_lane / b_lane are this
  // lane's byte offsets of that step within a stage (see the kernel).
  __device__ __forceinline__ void load(uint32_t sa, uint32_t sb, uint32_t a_lane, uint32_t b_lane) {
#pragma unroll
    for (int i = 0; i < Cfg::kMmaTilesM; ++i) ldmatrix_x4(a[i], sa + a_lane + i * 16 * Cfg::kStageWords * 4);
#pragma unroll
    for (int jp = 0; jp < Cfg::kMmaTilesN / 2; ++jp) ldmatrix_x4(b[jp], sb + b_lane + jp * 16 * Cfg::kStageWords * 4);
  }

  __device__ __forceinline__ void multiply(int (&acc)[Cfg::kMmaTilesM][Cfg::kMmaTilesN][4]) const {
#pragma unroll
    for (int i = 0; i < Cfg::kMmaTilesM; ++i)
#pragma unroll
      for (int j = 0; j < Cfg::kMmaTilesN; ++j)
        mma_b1_and(acc[i][j], a[i], b[j / 2][2 * (j % 2)], b[j / 2][2 * (j % 2) + 1]);
  }
};

template <typename Cfg, bool kAligned16, Epilogue kEpilogue>
__global__ void __launch_bounds__(Cfg::kThreads, Cfg::kBlocksPerSm)
    xnor_tc_kernel(const uint32_t* __restrict__ a, const uint32_t* __restrict__ b,
                   const int32_t* __restrict__ a_popc, const int32_t* __restrict__ b_popc,
                   const int32_t* __restrict__ bound, void* __restrict__ out, int M, int N, int k_words,
                   int k_real) {
  constexpr int kStages = Cfg::kStages;
  constexpr int kSteps = Cfg::kSteps;
  using Layout = SwizzledRows<Cfg::kSegmentsPerRow>;
  extern __shared__ __align__(128) uint32_t smem[];
  uint32_t* const smem_a = smem;                                // [kStages][kBlockM][kStageWords]
  uint32_t* const smem_b = smem + kStages * Cfg::kStageWordsA;  // [kStages][kBlockN][kStageWords]

  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int warp_m = warp / Cfg::kWarpsN;
  const int warp_n = warp % Cfg::kWarpsN;
  const int m0 = blockIdx.y * Cfg::kBlockM;
  const int n0 = blockIdx.x * Cfg::kBlockN;
  const StagePipeline<Cfg, kAligned16, Layout> pipeline(a, b, smem, m0, n0, M, N, k_words);
  const int k_tiles = pipeline.k_tiles;
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) pipeline.load(s);

  int acc[Cfg::kMmaTilesM][Cfg::kMmaTilesN][4];
#pragma unroll
  for (int i = 0; i < Cfg::kMmaTilesM; ++i)
#pragma unroll
    for (int j = 0; j < Cfg::kMmaTilesN; ++j)
#pragma unroll
      for (int r = 0; r < 4; ++r) acc[i][j][r] = 0;

  // ldmatrix row addresses of this lane: lanes 8q..8q+7 point at the rows of matrix q (see header).
  // For A, matrix q is rows (q & 1) * 8 + rr of the mma tile at segment 2s + (q >> 1); for B, columns
  // (q >> 1) * 8 + rr of an n-tile pair at segment 2s + (q & 1). The swizzle depends on rr only,
  // because tile offsets are multiples of 8 rows.
  const int q = lane >> 3;
  const int rr = lane & 7;
  uint32_t a_lane[kSteps], b_lane[kSteps];  // byte offsets within a stage, per mma step
#pragma unroll
  for (int s = 0; s < kSteps; ++s) {
    a_lane[s] = Layout::offset(warp_m * Cfg::kWarpM + (q & 1) * 8 + rr, 2 * s + (q >> 1)) * 4;
    b_lane[s] = Layout::offset(warp_n * Cfg::kWarpN + (q >> 1) * 8 + rr, 2 * s + (q & 1)) * 4;
  }
  const uint32_t smem_a_addr = smem_addr(smem_a);
  const uint32_t smem_b_addr = smem_addr(smem_b);
  auto stage_a = [&](int kt) { return smem_a_addr + stage_buffer<kStages>(kt) * Cfg::kStageWordsA * 4; };
  auto stage_b = [&](int kt) { return smem_b_addr + stage_buffer<kStages>(kt) * Cfg::kStageWordsB * 4; };

  if constexpr (!Cfg::kFragmentDoubleBuffer) {
    for (int kt = 0; kt < k_tiles; ++kt) {
      cp_async_wait<kStages - 2>();
      // After this barrier every thread's copies of tile kt are visible, and every warp is done reading
      // tile kt - 1, whose buffer the next load reuses.
      __syncthreads();
      pipeline.load(kt + kStages - 1);

      const int buf = stage_buffer<kStages>(kt);
      const uint32_t sa = smem_a_addr + buf * Cfg::kStageWordsA * 4;
      const uint32_t sb = smem_b_addr + buf * Cfg::kStageWordsB * 4;
#pragma unroll
      for (int s = 0; s < kSteps; ++s) {
        Fragments<Cfg> f;
        f.load(sa, sb, a_lane[s], b_lane[s]);
        f.multiply(acc);
      }
    }
  } else {
    // Two fragment sets: step s multiplies set s % 2 while the loads of the next step (the next stage's
    // step 0 after the last step) fill the other. The barrier moves to before the last step's loads:
    // there tile kt + 1 must have landed, and once every warp is past it nobody reads tile kt - 1, whose
    // buffer step 0 of the next iteration refills.
    Fragments<Cfg> f[2];
    cp_async_wait<kStages - 2>();
    __syncthreads();
    f[0].load(stage_a(0), stage_b(0), a_lane[0], b_lane[0]);
    for (int kt = 0; kt < k_tiles; ++kt) {
      const uint32_t sa = stage_a(kt);
      const uint32_t sb = stage_b(kt);
#pragma unroll
      for (int s = 0; s < kSteps; ++s) {
        if (s == kSteps - 1) {
          cp_async_wait<kStages - 2>();
          __syncthreads();
          if (kt + 1 < k_tiles) f[(s + 1) % 2].load(stage_a(kt + 1), stage_b(kt + 1), a_lane[0], b_lane[0]);
        } else {
          f[(s + 1) % 2].load(sa, sb, a_lane[s + 1], b_lane[s + 1]);
        }
        if (s == 0) pipeline.load(kt + kStages - 1);
        f[s % 2].multiply(acc);
      }
    }
  }
  cp_async_wait<0>();

  const int g = lane >> 2;
  const int t = lane & 3;
  store_tiles<Cfg::kMmaTilesM, Cfg::kMmaTilesN, kEpilogue, Cfg::kStreamingStores>(
      acc, m0 + warp_m * Cfg::kWarpM + g, n0 + warp_n * Cfg::kWarpN + 2 * t, t, M, N, k_real, a_popc, b_popc, bound,
      out);
}

// ---- the wgmma kernel (sm_90a) ----------------------------------------------------------------------------

#if BNN_WGMMA
constexpr int kWgmmaN = WgmmaConfig::kBlockN;  // one m64n256 instruction covers a warpgroup's whole tile width
constexpr int kWgmmaTilesN = kWgmmaN / 8;

// Stage layout of the wgmma kernel: 8-row x 16-byte core matrices, 128 contiguous bytes each (see the header).
struct CoreMatrices {
  static constexpr int kCoreWords = 8 * 4;
  static constexpr int kGroupWords = WgmmaConfig::kSegmentsPerRow * kCoreWords;  // one 8-row group: 512 bytes
  __device__ __forceinline__ static int offset(int row, int seg) {
    return (row / 8) * kGroupWords + seg * kCoreWords + (row % 8) * 4;
  }
  // Copy assignment: 8 lanes fill one core matrix (rows 0-7 of a segment), a warp one 8-row group.
  __device__ __forceinline__ static int copy_row(int tid) { return tid % 8 + 8 * (tid / 32); }
  __device__ __forceinline__ static int copy_seg(int tid) { return (tid / 8) % WgmmaConfig::kSegmentsPerRow; }
};

// Shared-memory matrix descriptor (no swizzle, base offset 0): start, leading and stride byte offsets >> 4.
__device__ __forceinline__ uint64_t wgmma_desc(uint32_t smem_byte_addr, uint32_t leading, uint32_t stride) {
  return static_cast<uint64_t>((smem_byte_addr & 0x3FFFF) >> 4) | (static_cast<uint64_t>(leading >> 4) << 16) |
         (static_cast<uint64_t>(stride >> 4) << 32);
}

#define BNN_D4(j) "+r"(d[j][0]), "+r"(d[j][1]), "+r"(d[j][2]), "+r"(d[j][3])

// d (64 x 256 per warpgroup, this thread's 128 values in m16n8 tile order) += popc(A & B) over 256 bits.
__device__ __forceinline__ void wgmma_m64n256k256_b1_and(int (&d)[kWgmmaTilesN][4], uint64_t desc_a, uint64_t desc_b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n256k256.s32.b1.b1.and.popc {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "
      "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "
      "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "
      "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, "
      "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
      "}, %128, %129, p;\n}\n"
      : BNN_D4(0), BNN_D4(1), BNN_D4(2), BNN_D4(3), BNN_D4(4), BNN_D4(5), BNN_D4(6), BNN_D4(7), BNN_D4(8),
        BNN_D4(9), BNN_D4(10), BNN_D4(11), BNN_D4(12), BNN_D4(13), BNN_D4(14), BNN_D4(15), BNN_D4(16), BNN_D4(17),
        BNN_D4(18), BNN_D4(19), BNN_D4(20), BNN_D4(21), BNN_D4(22), BNN_D4(23), BNN_D4(24), BNN_D4(25), BNN_D4(26),
        BNN_D4(27), BNN_D4(28), BNN_D4(29), BNN_D4(30), BNN_D4(31)
      : "l"(desc_a), "l"(desc_b));
}

// Keeps the compiler from moving accumulator reads or writes across wgmma fences and waits.
__device__ __forceinline__ void wgmma_fence_operands(int (&d)[kWgmmaTilesN][4]) {
#pragma unroll
  for (int j = 0; j < kWgmmaTilesN; ++j)
#pragma unroll
    for (int r = 0; r < 4; ++r) asm volatile("" : "+r"(d[j][r])::"memory");
}

#endif  // BNN_WGMMA

template <bool kAligned16, Epilogue kEpilogue>
__global__ void __launch_bounds__(WgmmaConfig::kThreads, 1)
    xnor_tc_wgmma_kernel(const uint32_t* __restrict__ a, const uint32_t* __restrict__ b,
                         const int32_t* __restrict__ a_popc, const int32_t* __restrict__ b_popc,
                         const int32_t* __restrict__ bound, void* __restrict__ out, int M, int N, int k_words,
                         int k_real) {
#if BNN_WGMMA
  using Cfg = WgmmaConfig;
  constexpr int kStages = Cfg::kStages;
  extern __shared__ __align__(128) uint32_t smem[];
  uint32_t* const smem_a = smem;                                // [kStages][kBlockM / 8][4 segments][8 rows][4 words]
  uint32_t* const smem_b = smem + kStages * Cfg::kStageWordsA;  // [kStages][kBlockN / 8][4 segments][8 rows][4 words]

  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int warpgroup = warp / 4;
  const int m0 = blockIdx.y * Cfg::kBlockM;
  const int n0 = blockIdx.x * Cfg::kBlockN;
  // A stage may be overwritten only after the wgmma group reading it has retired; with one group left
  // in flight, loads run kStages - 2 tiles ahead.
  constexpr int kAhead = kStages - 2;
  const StagePipeline<Cfg, kAligned16, CoreMatrices> pipeline(a, b, smem, m0, n0, M, N, k_words);
  const int k_tiles = pipeline.k_tiles;
#pragma unroll
  for (int s = 0; s < kAhead; ++s) pipeline.load(s);

  int acc[1][kWgmmaTilesN][4];
#pragma unroll
  for (int j = 0; j < kWgmmaTilesN; ++j)
#pragma unroll
    for (int r = 0; r < 4; ++r) acc[0][j][r] = 0;

  constexpr uint32_t kLeading = CoreMatrices::kCoreWords * 4;   // next core matrix along K: 128 bytes
  constexpr uint32_t kStride = CoreMatrices::kGroupWords * 4;   // next 8-row group: 512 bytes
  // This warpgroup's 64 rows of A start 8 groups further per warpgroup.
  const uint32_t a_base = smem_addr(smem_a) + warpgroup * (64 / 8) * kStride;
  const uint32_t b_base = smem_addr(smem_b);

  for (int kt = 0; kt < k_tiles; ++kt) {
    cp_async_wait<kAhead - 1>();
    // cp.async wrote through the generic proxy; the tensor cores read through the async proxy.
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    // After this barrier tile kt is complete for everyone, and every warpgroup has retired the wgmma
    // group of tile kt - 2 (its wait_group 1 at the end of iteration kt - 1), whose buffer is loaded next.
    __syncthreads();
    pipeline.load(kt + kAhead);

    const int buf = stage_buffer<kStages>(kt);
    const uint32_t sa = a_base + buf * Cfg::kStageWordsA * 4;
    const uint32_t sb = b_base + buf * Cfg::kStageWordsB * 4;
    wgmma_fence_operands(acc[0]);
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
    for (int s = 0; s < 2; ++s)  // step s reads segments 2s, 2s + 1
      wgmma_m64n256k256_b1_and(acc[0], wgmma_desc(sa + 2 * s * kLeading, kLeading, kStride),
                               wgmma_desc(sb + 2 * s * kLeading, kLeading, kStride));
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
    asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory");
    wgmma_fence_operands(acc[0]);
  }
  asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
  wgmma_fence_operands(acc[0]);
  cp_async_wait<0>();

  const int g = lane >> 2;
  const int t = lane & 3;
  store_tiles<1, kWgmmaTilesN, kEpilogue, false>(acc, m0 + warpgroup * 64 + (warp % 4) * 16 + g, n0 + 2 * t, t, M, N,
                                          k_real, a_popc, b_popc, bound, out);
#endif
}

__global__ void wgmma_compiled_probe(int* compiled) { *compiled = BNN_WGMMA; }

// Whether the loaded binary holds the wgmma kernel for the current device (asked once per process).
bool wgmma_compiled() {
  static std::atomic<int> state{-1};
  int known = state.load();
  if (known >= 0) return known == 1;
  int* flag = nullptr;
  int host = 0;
  if (cudaMalloc(&flag, sizeof(int)) == cudaSuccess) {
    wgmma_compiled_probe<<<1, 1>>>(flag);
    if (cudaMemcpy(&host, flag, sizeof(int), cudaMemcpyDeviceToHost) != cudaSuccess) host = 0;
    cudaFree(flag);
  }
  cudaGetLastError();  // a failed probe means "not available", not a sticky error for the caller
  state.store(host == 1 ? 1 : 0);
  return host == 1;
}

// ---- row popcounts and launchers ----------------------------------------------------------------------------

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

// One GEMM's operands, for the launchers.
struct Problem {
  const uint32_t* a;
  const uint32_t* b;
  const int32_t* a_popc;
  const int32_t* b_popc;
  const int32_t* bound;  // threshold form: per-column integer boundaries
  void* out;
  int64_t m, n, k_words, k;

  // Whole 16-byte segments can be copied when rows are a multiple of 4 words and the bases are aligned.
  bool aligned16() const {
    return k_words % 4 == 0 && reinterpret_cast<uintptr_t>(a) % 16 == 0 && reinterpret_cast<uintptr_t>(b) % 16 == 0;
  }
};

using TileKernel = void (*)(const uint32_t*, const uint32_t*, const int32_t*, const int32_t*, const int32_t*, void*,
                            int, int, int, int);

cudaError_t launch_tiles(TileKernel kernel, int block_m, int block_n, int threads, int smem_bytes, int blocks_per_sm,
                         const Problem& p, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((p.n + block_n - 1) / block_n), static_cast<unsigned>((p.m + block_m - 1) / block_m));
  if (grid.y > 65535u) return cudaErrorInvalidValue;
  // More than 48 KiB of dynamic shared memory must be opted into, per kernel.
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes);
  if (err != cudaSuccess) return err;
  if (blocks_per_sm > 1) {
    // Ask for the largest shared-memory carveout, so that the blocks the configuration was built for fit.
    err = cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, cudaSharedmemCarveoutMaxShared);
    if (err != cudaSuccess) return err;
  }
  kernel<<<grid, threads, smem_bytes, stream>>>(p.a, p.b, p.a_popc, p.b_popc, p.bound, p.out, static_cast<int>(p.m),
                                                static_cast<int>(p.n), static_cast<int>(p.k_words),
                                                static_cast<int>(p.k));
  return cudaGetLastError();
}

template <typename Cfg, Epilogue kEpilogue>
cudaError_t launch_mma(const Problem& p, cudaStream_t stream) {
  return launch_tiles(p.aligned16() ? xnor_tc_kernel<Cfg, true, kEpilogue> : xnor_tc_kernel<Cfg, false, kEpilogue>,
                      Cfg::kBlockM, Cfg::kBlockN, Cfg::kThreads, Cfg::kSmemBytes, Cfg::kBlocksPerSm, p, stream);
}

template <Epilogue kEpilogue>
cudaError_t launch(const Problem& p, int instruction, int config, cudaStream_t stream) {
  if (!valid_problem(p.m, p.n, p.k_words, p.k)) return cudaErrorInvalidValue;
  if (instruction != BNN_TC_MMA_SYNC && instruction != BNN_TC_WGMMA) return cudaErrorInvalidValue;
  // The wgmma kernel has one shape, the base configuration's, whatever the default: it takes config 0 only.
  if (config < 0 || config >= kConfigCount || (instruction == BNN_TC_WGMMA && config != 0)) return cudaErrorInvalidValue;
  if (instruction == BNN_TC_WGMMA && !wgmma_compiled()) return cudaErrorNotSupported;
  if (p.m == 0 || p.n == 0) return cudaSuccess;
  if (instruction == BNN_TC_WGMMA) {
    using Cfg = WgmmaConfig;
    return launch_tiles(p.aligned16() ? xnor_tc_wgmma_kernel<true, kEpilogue> : xnor_tc_wgmma_kernel<false, kEpilogue>,
                        Cfg::kBlockM, Cfg::kBlockN, Cfg::kThreads, Cfg::kSmemBytes, 1, p, stream);
  }
  int index = 0;
#define BNN_TC_LAUNCH_CONFIG(name, ...) \
  if (config == index++) return launch_mma<Config_##name, kEpilogue>(p, stream);
  BNN_TC_MMA_CONFIGS(BNN_TC_LAUNCH_CONFIG)
#undef BNN_TC_LAUNCH_CONFIG
  return cudaErrorInvalidValue;
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
                                             int64_t words32, int64_t k, int instruction, int config,
                                             cudaStream_t stream) {
  return launch<Epilogue::kInt32>(Problem{a, b, a_popc, b_popc, nullptr, c, m, n, words32, k}, instruction, config,
                                  stream);
}

extern "C" cudaError_t bnn_xnor_tc_gemm_threshold_cuda(const uint32_t* a, const uint32_t* b, const int32_t* a_popc,
                                                       const int32_t* b_popc, const int32_t* bound,
                                                       uint64_t* out_bits, int64_t m, int64_t n, int64_t words32,
                                                       int64_t k, int instruction, int config,
                                                       cudaStream_t stream) {
  return launch<Epilogue::kThresholdBits>(Problem{a, b, a_popc, b_popc, bound, out_bits, m, n, words32, k},
                                          instruction, config, stream);
}

extern "C" int bnn_xnor_tc_wgmma_available(void) { return wgmma_compiled() ? 1 : 0; }

extern "C" int bnn_xnor_tc_config_count(void) { return kConfigCount; }
