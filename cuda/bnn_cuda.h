// Launchers of the hand-written CUDA kernels (plain CUDA: no torch headers, so each .cu compiles in
// seconds). Every launcher only enqueues work on `stream` and returns the launch status; the caller
// (cuda/glue/inference_ops_cuda.cpp) owns the tensors and turns a failure into an error.
//
// Packed layout shared by all kernels: row r of a (rows, k) float matrix becomes words_per_row =
// ceil(k / 64) little-endian 64-bit words; element j is bit j % 64 of word j / 64, set when x >= 0
// (so 0 and -0.0 are +1); bits past k are zero. Read as 32-bit words it is the same bit order.
#pragma once
#include <cstdint>
#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

// Packs a contiguous row-major float matrix x (rows, k) into out (rows, ceil(k / 64)). The sign test is
// made on the bits of x (no flush-to-zero can turn a negative denormal into +1), in x's own precision.
cudaError_t bnn_pack_rows_cuda(const float* x, int64_t rows, int64_t k, uint64_t* out, cudaStream_t stream);
cudaError_t bnn_pack_rows_f64_cuda(const double* x, int64_t rows, int64_t k, uint64_t* out, cudaStream_t stream);

// The threshold form: bit j of row r set when value[r * n + j] >= bound[j], value (rows, n) row-major, packed
// as above into out (rows, ceil(n / 64)); compared exactly in the values' own type.
cudaError_t bnn_pack_ge_i32_cuda(const int32_t* value, const int32_t* bound, int64_t rows, int64_t n, uint64_t* out,
                                 cudaStream_t stream);
cudaError_t bnn_pack_ge_f32_cuda(const float* value, const float* bound, int64_t rows, int64_t n, uint64_t* out,
                                 cudaStream_t stream);

// The tuned CUDA-core XNOR GEMM: c (m, n) int32 = k - 2 * popcount(a_i XOR b_j) over the k real bits,
// for a (m, words) and b (n, words) packed as above, words = ceil(k / 64).
cudaError_t bnn_xnor_gemm_cuda(const uint64_t* a, const uint64_t* b, int32_t* c, int64_t m, int64_t n,
                               int64_t words, int64_t k, cudaStream_t stream);

// The same product with carry-save popcounts (xnor_gemm_csa.cu): four POPC per 256 bits instead of eight.
cudaError_t bnn_xnor_gemm_csa_cuda(const uint64_t* a, const uint64_t* b, int32_t* c, int64_t m, int64_t n,
                                   int64_t words, int64_t k, cudaStream_t stream);

// The paper's XNOR kernel (16x16 shared-memory tiles, one output per thread, 32-bit words): same
// result as bnn_xnor_gemm_cuda; words32 = 2 * ceil(k / 64) (the 64-bit buffers read as 32-bit words).
cudaError_t bnn_xnor_gemm_paper_cuda(const uint32_t* a, const uint32_t* b, int32_t* c, int64_t m, int64_t n,
                                     int64_t words32, int64_t k, cudaStream_t stream);

// The paper's unoptimised float baseline (16x16 shared-memory tiles): c (m, n) = a (m, k) @ b (n, k)^T.
cudaError_t bnn_baseline_gemm_cuda(const float* a, const float* b, float* c, int64_t m, int64_t n, int64_t k,
                                   cudaStream_t stream);

#ifdef __cplusplus
}
#endif
