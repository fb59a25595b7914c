// Copied unchanged below this line from ../shared/tools/gpu-peaks/b1_peak.cu (the project's shared, public test
// tooling), because ../shared does not travel to the GPU machines. scripts/gpu_check.sh builds and runs it.
// Hopper binary-throughput microbenchmarks (standalone; nvcc -gencode=arch=compute_90a,code=sm_90a -O3 b1_peak.cu -o b1_peak)
// Measures, per SM per clock and in T(binary-)ops/s (2 ops per bit-MAC):
//   1) CUDA-core XOR+POPC+IADD stream, 2) mma.sync m16n8k256 b1 AND/XOR (BMMA), 3) mma.sync m16n8k16 bf16 (HMMA ref),
//   4) wgmma m64n128k256 b1 AND (BGMMA).  Operands are random bits; results are written to defeat DCE.
#include <cstdio>
#include <cstdint>
#include <cstdlib>
#include <cuda_runtime.h>
#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("CUDA error %s at %s:%d\n", cudaGetErrorString(e), __FILE__, __LINE__); exit(1);} } while (0)

__global__ void popc_stream(const uint32_t* in, int* out, int iters, unsigned long long* cyc) {
  uint32_t a[8], b[8]; int acc[8];
  #pragma unroll
  for (int i = 0; i < 8; ++i) { a[i] = in[(threadIdx.x * 16 + i) & 4095]; b[i] = in[(threadIdx.x * 16 + 8 + i) & 4095]; acc[i] = 0; }
  unsigned long long t0 = clock64();
  for (int it = 0; it < iters; ++it) {
    #pragma unroll
    for (int j = 0; j < 8; ++j) {
      uint32_t bj = b[j] ^ (uint32_t)it;
      #pragma unroll
      for (int i = 0; i < 8; ++i) acc[i] += __popc(a[i] ^ bj);
    }
  }
  unsigned long long t1 = clock64();
  int s = 0;
  #pragma unroll
  for (int i = 0; i < 8; ++i) s += acc[i];
  out[blockIdx.x * blockDim.x + threadIdx.x] = s;
  if (threadIdx.x == 0) cyc[blockIdx.x] = t1 - t0;
}

template <bool XOR>
__global__ void bmma_stream(const uint32_t* in, int* out, int iters, unsigned long long* cyc) {
  uint32_t a[4], b[2]; int d[4][4] = {};
  #pragma unroll
  for (int i = 0; i < 4; ++i) a[i] = in[(threadIdx.x * 8 + i) & 4095];
  b[0] = in[(threadIdx.x * 8 + 4) & 4095]; b[1] = in[(threadIdx.x * 8 + 5) & 4095];
  unsigned long long t0 = clock64();
  for (int it = 0; it < iters; ++it) {
    #pragma unroll
    for (int c = 0; c < 4; ++c) {
      if (XOR)
        asm volatile("mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.xor.popc {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
          : "+r"(d[c][0]), "+r"(d[c][1]), "+r"(d[c][2]), "+r"(d[c][3]) : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
      else
        asm volatile("mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.and.popc {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
          : "+r"(d[c][0]), "+r"(d[c][1]), "+r"(d[c][2]), "+r"(d[c][3]) : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    }
  }
  unsigned long long t1 = clock64();
  int s = 0;
  #pragma unroll
  for (int c = 0; c < 4; ++c) s += d[c][0] + d[c][1] + d[c][2] + d[c][3];
  out[blockIdx.x * blockDim.x + threadIdx.x] = s;
  if (threadIdx.x == 0) cyc[blockIdx.x] = t1 - t0;
}

__global__ void hmma_stream(const uint32_t* in, int* out, int iters, unsigned long long* cyc) {
  uint32_t a[4], b[2]; float d[4][4] = {};
  #pragma unroll
  for (int i = 0; i < 4; ++i) a[i] = (in[(threadIdx.x * 8 + i) & 4095] & 0x3f003f00u) | 0x3c003c00u;  // modest bf16 values
  b[0] = 0x3f803f80u; b[1] = 0x3f803f80u;
  unsigned long long t0 = clock64();
  for (int it = 0; it < iters; ++it) {
    #pragma unroll
    for (int c = 0; c < 4; ++c)
      asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(d[c][0]), "+f"(d[c][1]), "+f"(d[c][2]), "+f"(d[c][3]) : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
  unsigned long long t1 = clock64();
  float s = 0;
  #pragma unroll
  for (int c = 0; c < 4; ++c) s += d[c][0] + d[c][1] + d[c][2] + d[c][3];
  out[blockIdx.x * blockDim.x + threadIdx.x] = s;
  if (threadIdx.x == 0) cyc[blockIdx.x] = t1 - t0;
}

__device__ __forceinline__ void wgmma_b1_n128(int (&d)[64], uint64_t da, uint64_t db) {
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
    "wgmma.mma_async.sync.aligned.m64n128k256.s32.b1.b1.and.popc "
    "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}, %64, %65, p;\n}\n"
    : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3]), "+r"(d[4]), "+r"(d[5]), "+r"(d[6]), "+r"(d[7]), "+r"(d[8]), "+r"(d[9]), "+r"(d[10]), "+r"(d[11]), "+r"(d[12]), "+r"(d[13]), "+r"(d[14]), "+r"(d[15]), "+r"(d[16]), "+r"(d[17]), "+r"(d[18]), "+r"(d[19]), "+r"(d[20]), "+r"(d[21]), "+r"(d[22]), "+r"(d[23]), "+r"(d[24]), "+r"(d[25]), "+r"(d[26]), "+r"(d[27]), "+r"(d[28]), "+r"(d[29]), "+r"(d[30]), "+r"(d[31]), "+r"(d[32]), "+r"(d[33]), "+r"(d[34]), "+r"(d[35]), "+r"(d[36]), "+r"(d[37]), "+r"(d[38]), "+r"(d[39]), "+r"(d[40]), "+r"(d[41]), "+r"(d[42]), "+r"(d[43]), "+r"(d[44]), "+r"(d[45]), "+r"(d[46]), "+r"(d[47]), "+r"(d[48]), "+r"(d[49]), "+r"(d[50]), "+r"(d[51]), "+r"(d[52]), "+r"(d[53]), "+r"(d[54]), "+r"(d[55]), "+r"(d[56]), "+r"(d[57]), "+r"(d[58]), "+r"(d[59]), "+r"(d[60]), "+r"(d[61]), "+r"(d[62]), "+r"(d[63])
    : "l"(da), "l"(db));
}

__device__ __forceinline__ uint64_t smem_desc(const void* p, uint32_t lbo, uint32_t sbo) {
  uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
  return (uint64_t)((a >> 4) & 0x3FFF) | ((uint64_t)((lbo >> 4) & 0x3FFF) << 16) | ((uint64_t)((sbo >> 4) & 0x3FFF) << 32);  // no swizzle
}
// 2 consumer warpgroups per CTA, each issues GROUP wgmmas per commit; operands stay in smem (throughput only).
__global__ void __launch_bounds__(256, 1) wgmma_b1_stream(const uint32_t* in, int* out, int iters, unsigned long long* cyc) {
  __shared__ __align__(1024) uint32_t sA[2][512];    // 2 KB per warpgroup: 64 x 256 bits
  __shared__ __align__(1024) uint32_t sB[2][1024];   // 4 KB per warpgroup: 128 x 256 bits
  int wg = threadIdx.x / 128;
  for (int i = threadIdx.x; i < 2 * 512; i += blockDim.x) (&sA[0][0])[i] = in[i & 4095];
  for (int i = threadIdx.x; i < 2 * 1024; i += blockDim.x) (&sB[0][0])[i] = in[(i * 7) & 4095];
  asm volatile("fence.proxy.async.shared::cta;");
  __syncthreads();
  uint64_t da = smem_desc(&sA[wg][0], 128, 256), db = smem_desc(&sB[wg][0], 128, 256);
  int d[64];
  #pragma unroll
  for (int i = 0; i < 64; ++i) d[i] = 0;
  unsigned long long t0 = clock64();
  for (int it = 0; it < iters; ++it) {
    asm volatile("wgmma.fence.sync.aligned;");
    #pragma unroll
    for (int g = 0; g < 4; ++g) wgmma_b1_n128(d, da, db);
    asm volatile("wgmma.commit_group.sync.aligned;");
    asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory");
  }
  unsigned long long t1 = clock64();
  int s = 0;
  #pragma unroll
  for (int i = 0; i < 64; ++i) s += d[i];
  out[blockIdx.x * blockDim.x + threadIdx.x] = s;
  if (threadIdx.x == 0) cyc[blockIdx.x] = t1 - t0;
}

template <typename K>
void run(const char* name, K kern, int blocks, int threads, int iters, double ops_per_iter_per_block, const uint32_t* din, void* dout,
         unsigned long long* dcyc, int nsm) {
  cudaEvent_t e0, e1; CK(cudaEventCreate(&e0)); CK(cudaEventCreate(&e1));
  kern<<<blocks, threads>>>(din, (int*)dout, 10, dcyc);  // warm-up
  CK(cudaGetLastError()); CK(cudaDeviceSynchronize());
  float best = 1e30f;
  for (int r = 0; r < 5; ++r) {
    CK(cudaEventRecord(e0)); kern<<<blocks, threads>>>(din, (int*)dout, iters, dcyc); CK(cudaEventRecord(e1));
    CK(cudaEventSynchronize(e1)); CK(cudaGetLastError());
    float ms; CK(cudaEventElapsedTime(&ms, e0, e1)); if (ms < best) best = ms;
  }
  unsigned long long* hc = (unsigned long long*)malloc(blocks * sizeof(unsigned long long));
  CK(cudaMemcpy(hc, dcyc, blocks * sizeof(unsigned long long), cudaMemcpyDeviceToHost));
  double mc = 0; for (int i = 0; i < blocks; ++i) mc += hc[i]; mc /= blocks; free(hc);
  double ops = ops_per_iter_per_block * (double)iters * blocks;
  int waves = (blocks + nsm - 1) / nsm;  // one resident block per SM assumed for the per-clock figure
  printf("%-28s %10.1f T ops/s   %9.0f ops/clk/SM (clock64, %d blocks, %.3f ms)\n", name, ops / (best * 1e-3) / 1e12,
         ops / ((double)nsm * mc), blocks, best);  // all blocks co-resident (single wave) -> per-SM rate
  (void)waves;
}
// the (int*) cast above is fine for float out too (only written)
int main() {
  cudaDeviceProp p; CK(cudaGetDeviceProperties(&p, 0));
  int nsm = p.multiProcessorCount;
  int clk = 0; CK(cudaDeviceGetAttribute(&clk, cudaDevAttrClockRate, 0));
  printf("%s, %d SMs, clock %d kHz (max)\n", p.name, nsm, clk);
  const int N = 4096; uint32_t h[N]; srand(1234); for (int i = 0; i < N; ++i) h[i] = ((uint32_t)rand() << 16) ^ (uint32_t)rand();
  uint32_t* din; void* dout; unsigned long long* dcyc;
  CK(cudaMalloc(&din, N * 4)); CK(cudaMemcpy(din, h, N * 4, cudaMemcpyHostToDevice));
  CK(cudaMalloc(&dout, 1 << 24)); CK(cudaMalloc(&dcyc, 1 << 16));
  // ops convention: 2 ops per bit-MAC (or per FMA)
  run("cuda-core xor+popc+add", popc_stream, nsm * 4, 256, 2000, 2.0 * 256 * 64 * 32, din, dout, dcyc, nsm);
  run("mma.sync m16n8k256 AND", bmma_stream<false>, nsm * 2, 256, 2000, 2.0 * 8 * 4 * 16 * 8 * 256, din, dout, dcyc, nsm);
  run("mma.sync m16n8k256 XOR", bmma_stream<true>, nsm * 2, 256, 2000, 2.0 * 8 * 4 * 16 * 8 * 256, din, dout, dcyc, nsm);
  run("mma.sync m16n8k16 bf16", hmma_stream, nsm * 2, 256, 2000, 2.0 * 8 * 4 * 16 * 8 * 16, din, dout, dcyc, nsm);
  run("wgmma m64n128k256 b1 AND", wgmma_b1_stream, nsm, 256, 2000, 2.0 * 2 * 4 * 64 * 128 * 256, din, dout, dcyc, nsm);
  return 0;
}
