// 1-bit tensor-core GEMM (mma.sync m16n8k256 b1 AND+POPC), plain CUDA: no torch headers here.
//
// Operands are bit matrices packed as by bnnctl.kernels.pack(): one row per output row (A) or output
// column (B), element j in word j / 32, bit j % 32 (LSB first), words32 words per row, padding bits
// zero. The int64 words of pack() viewed as int32 are exactly this layout.
//
// The +/-1 dot product of row i of A and row j of B over k real entries is
//   dot = 4 * popc(a & b) - 2 * popc(a) - 2 * popc(b) + k
// so the kernel needs the row popcounts of A and B (bnn_row_popcount_cuda computes them).
//
// Every launcher only enqueues work on `stream` and returns the launch status (cudaSuccess or the
// error, cudaErrorInvalidValue for arguments outside the limits below).
#pragma once

#include <cstdint>
#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

// Which tensor-core instruction a launch uses: mma.sync m16n8k256 (any sm_80+ build), or wgmma
// m64n256k256 (only where the extension was built for sm_90a and runs on an sm_90 device; otherwise the
// launch returns cudaErrorNotSupported).
enum BnnTcInstruction { BNN_TC_MMA_SYNC = 0, BNN_TC_WGMMA = 1 };

// 1 when the wgmma kernel is in the loaded binary for the current device, else 0 (asked once per process).
int bnn_xnor_tc_wgmma_available(void);

// Number of mma.sync kernel configurations (tile shape, stages, ...: BNN_TC_MMA_CONFIGS in xnor_tc.cu; the
// `config` argument below indexes them, 0 being the default). The wgmma kernel has one shape and takes config 0.
int bnn_xnor_tc_config_count(void);

// out[r] = number of set bits among the first k bits of row r of x (rows x words32 words).
cudaError_t bnn_row_popcount_cuda(const uint32_t* x, int64_t rows, int64_t words32, int64_t k, int32_t* out,
                                  cudaStream_t stream);

// c (m x n, row-major int32) = (+/-1 A) @ (+/-1 B)^T over k entries.
// a: m x words32, b: n x words32, a_popc / b_popc: their row popcounts (bnn_row_popcount_cuda).
// Any m, n >= 0 and k <= 32 * words32, k <= 2^29 (4 * popc must fit in int32), m < 2^31, n < 2^31.
// Bits past k must be zero in a or in b (pack() zeroes them in both).
cudaError_t bnn_xnor_tc_gemm_cuda(const uint32_t* a, const uint32_t* b, const int32_t* a_popc,
                                  const int32_t* b_popc, int32_t* c, int64_t m, int64_t n, int64_t words32,
                                  int64_t k, int instruction, int config, cudaStream_t stream);

// Same product, but each output is compared with a per-column integer boundary and written as one bit:
// bit j of row i = (dot[i][j] >= bound[j]), packed like pack(): uint64 words, ceil(n / 64) per row,
// LSB first, padding bits zero -- i.e. directly the packed input of the next binary layer. The dot product
// is an integer, so a real threshold t is the boundary ceil(t) (glue/op_checks.h threshold_bounds converts
// them on the host in float64), and the comparison is exact for every k: no float32 rounding.
// (A negative batch-norm scale is folded by negating that column's weights, which flips its bits.)
cudaError_t bnn_xnor_tc_gemm_threshold_cuda(const uint32_t* a, const uint32_t* b, const int32_t* a_popc,
                                            const int32_t* b_popc, const int32_t* bound, uint64_t* out_bits,
                                            int64_t m, int64_t n, int64_t words32, int64_t k, int instruction,
                                            int config, cudaStream_t stream);

#ifdef __cplusplus
}
#endif
