// x86-64 CPU ceilings for the XNOR-popcount GEMM against fp32, measured on this machine (standalone):
//   g++ -O3 -march=native -fopenmp tools/cpu_peaks/popc_peak.cpp -o popc_peak && ./popc_peak
// Prints, per thread and for all OpenMP threads together:
//   1) fp32 FMA from registers (12 independent 8-lane chains): the rate no fp32 GEMM can beat;
//   2) XOR + popcount + accumulate from registers, by each method this ISA offers:
//      scalar 64-bit POPCNT, AVX2 nibble lookup (vpshufb), AVX2 Harley-Seal carry-save adders,
//      and AVX-512 VPOPCNTDQ where the CPU has it.
// Rates are in G binary-op/s with 2 ops per bit multiply-accumulate (the convention of `bnnctl bench`
// and of FLOP/s), so "best popcount / fp32 FMA" is the largest XNOR-over-fp32 GEMM speed-up this core
// can give when both kernels run at their instruction ceilings (loads, packing and cache misses only
// lower either side). Run it on an otherwise idle machine: the rates are measured one after another,
// so a neighbour's load skews their ratio.
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace {

volatile uint64_t g_sink;

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// ---- fp32 FMA: ops = 2 * 8 lanes * 12 chains per iteration
__attribute__((target("avx2,fma"))) double fma_rate(int64_t iters) {
  __m256 acc[12];
  for (int i = 0; i < 12; ++i) acc[i] = _mm256_set1_ps(0.001f * i);
  const __m256 x = _mm256_set1_ps(0.999f), y = _mm256_set1_ps(1e-7f);
  auto t0 = std::chrono::steady_clock::now();
  for (int64_t it = 0; it < iters; ++it) {
    for (int i = 0; i < 12; ++i) acc[i] = _mm256_fmadd_ps(acc[i], x, y);
  }
  double s = seconds_since(t0);
  float out[8];
  __m256 sum = acc[0];
  for (int i = 1; i < 12; ++i) sum = _mm256_add_ps(sum, acc[i]);
  _mm256_storeu_ps(out, sum);
  g_sink = g_sink + static_cast<uint64_t>(out[0]);
  return 2.0 * 8 * 12 * iters / s;
}

// The popcount loops below XOR four operand registers a0..a3 with a b that changes every four
// vectors (b + 1), as a register-blocked GEMM reuses its loads: one cheap op per four vectors of
// bookkeeping and no loads, so what they measure is the ALU ceiling of each popcount method.

// ---- scalar POPCNT
__attribute__((target("popcnt"))) double scalar_rate(const uint64_t* seed, int64_t iters) {
  const uint64_t a0 = seed[0], a1 = seed[1], a2 = seed[2], a3 = seed[3];
  uint64_t b = seed[4], acc0 = 0, acc1 = 0, acc2 = 0, acc3 = 0;
  auto t0 = std::chrono::steady_clock::now();
  for (int64_t it = 0; it < iters; ++it) {
    acc0 += _mm_popcnt_u64(a0 ^ b);
    acc1 += _mm_popcnt_u64(a1 ^ b);
    acc2 += _mm_popcnt_u64(a2 ^ b);
    acc3 += _mm_popcnt_u64(a3 ^ b);
    b += 1;
  }
  double s = seconds_since(t0);
  g_sink = g_sink + acc0 + acc1 + acc2 + acc3;
  return 2.0 * 64 * 4 * iters / s;
}

// ---- AVX2 nibble lookup: per vector xor, 2 and, shift, 2 vpshufb, 2 byte adds; vpsadbw every 8
__attribute__((target("avx2"))) inline __m256i lookup_count(__m256i v) {
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                       0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i low = _mm256_set1_epi8(0x0f);
  return _mm256_add_epi8(_mm256_shuffle_epi8(lut, _mm256_and_si256(v, low)),
                         _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(v, 4), low)));
}

__attribute__((target("avx2"))) double lookup_rate(const uint64_t* seed, int64_t iters) {
  const __m256i* v = reinterpret_cast<const __m256i*>(seed);
  const __m256i a0 = _mm256_loadu_si256(v), a1 = _mm256_loadu_si256(v + 1), a2 = _mm256_loadu_si256(v + 2),
                a3 = _mm256_loadu_si256(v + 3), one = _mm256_set1_epi64x(1);
  __m256i b = _mm256_loadu_si256(v + 4), total0 = _mm256_setzero_si256(), total1 = total0;
  auto t0 = std::chrono::steady_clock::now();
  for (int64_t it = 0; it < iters; ++it) {  // 8 vectors per iteration
    __m256i bytes0 = lookup_count(_mm256_xor_si256(a0, b));
    __m256i bytes1 = lookup_count(_mm256_xor_si256(a1, b));
    bytes0 = _mm256_add_epi8(bytes0, lookup_count(_mm256_xor_si256(a2, b)));
    bytes1 = _mm256_add_epi8(bytes1, lookup_count(_mm256_xor_si256(a3, b)));
    b = _mm256_add_epi64(b, one);
    bytes0 = _mm256_add_epi8(bytes0, lookup_count(_mm256_xor_si256(a0, b)));
    bytes1 = _mm256_add_epi8(bytes1, lookup_count(_mm256_xor_si256(a1, b)));
    bytes0 = _mm256_add_epi8(bytes0, lookup_count(_mm256_xor_si256(a2, b)));
    bytes1 = _mm256_add_epi8(bytes1, lookup_count(_mm256_xor_si256(a3, b)));
    b = _mm256_add_epi64(b, one);
    total0 = _mm256_add_epi64(total0, _mm256_sad_epu8(bytes0, _mm256_setzero_si256()));
    total1 = _mm256_add_epi64(total1, _mm256_sad_epu8(bytes1, _mm256_setzero_si256()));
  }
  double s = seconds_since(t0);
  g_sink = g_sink + static_cast<uint64_t>(_mm256_extract_epi64(_mm256_add_epi64(total0, total1), 0));
  return 2.0 * 256 * 8 * iters / s;
}

// ---- AVX2 Harley-Seal: a carry-save adder tree over 16 vectors, one lookup count per 16 (Mula et al.)
__attribute__((target("avx2"))) inline void csa(__m256i& high, __m256i& low, __m256i a, __m256i b, __m256i c) {
  const __m256i u = _mm256_xor_si256(a, b);
  high = _mm256_or_si256(_mm256_and_si256(a, b), _mm256_and_si256(u, c));
  low = _mm256_xor_si256(u, c);
}

__attribute__((target("avx2"))) double harley_seal_rate(const uint64_t* seed, int64_t iters) {
  const __m256i* v = reinterpret_cast<const __m256i*>(seed);
  const __m256i a0 = _mm256_loadu_si256(v), a1 = _mm256_loadu_si256(v + 1), a2 = _mm256_loadu_si256(v + 2),
                a3 = _mm256_loadu_si256(v + 3), one = _mm256_set1_epi64x(1);
  __m256i b = _mm256_loadu_si256(v + 4), total = _mm256_setzero_si256();
  __m256i ones = _mm256_setzero_si256(), twos = ones, fours = ones, eights = ones;
  // eight vectors into the tree: four CSAs into ones, two into twos, one into fours; out: their eights
  auto add_eight = [&](__m256i& eights_out) {
    __m256i fours_half[2];
    for (__m256i& fours_out : fours_half) {
      __m256i twos_a, twos_b;
      csa(twos_a, ones, ones, _mm256_xor_si256(a0, b), _mm256_xor_si256(a1, b));
      csa(twos_b, ones, ones, _mm256_xor_si256(a2, b), _mm256_xor_si256(a3, b));
      b = _mm256_add_epi64(b, one);
      csa(fours_out, twos, twos, twos_a, twos_b);
    }
    csa(eights_out, fours, fours, fours_half[0], fours_half[1]);
  };
  auto t0 = std::chrono::steady_clock::now();
  for (int64_t it = 0; it < iters; ++it) {  // 16 vectors per iteration
    __m256i eights_a, eights_b, sixteens;
    add_eight(eights_a);
    add_eight(eights_b);
    csa(sixteens, eights, eights, eights_a, eights_b);
    total = _mm256_add_epi64(total, _mm256_sad_epu8(lookup_count(sixteens), _mm256_setzero_si256()));
  }
  double s = seconds_since(t0);
  // keep ones..eights live (a real count would weight them 1, 2, 4, 8; the rate does not depend on it)
  total = _mm256_add_epi64(total, _mm256_sad_epu8(lookup_count(_mm256_or_si256(_mm256_or_si256(ones, twos),
                                                                                _mm256_or_si256(fours, eights))),
                                                  _mm256_setzero_si256()));
  g_sink = g_sink + static_cast<uint64_t>(_mm256_extract_epi64(total, 0));
  return 2.0 * 256 * 16 * iters / s;
}

// ---- AVX-512 VPOPCNTDQ
__attribute__((target("avx512f,avx512vpopcntdq"))) double vpopcnt_rate(const uint64_t* seed, int64_t iters) {
  const __m512i* v = reinterpret_cast<const __m512i*>(seed);
  const __m512i a0 = _mm512_loadu_si512(v), a1 = _mm512_loadu_si512(v + 1), a2 = _mm512_loadu_si512(v + 2),
                a3 = _mm512_loadu_si512(v + 3), one = _mm512_set1_epi64(1);
  __m512i b = _mm512_loadu_si512(v + 4), acc0 = _mm512_setzero_si512(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
  auto t0 = std::chrono::steady_clock::now();
  for (int64_t it = 0; it < iters; ++it) {  // 4 vectors per iteration
    acc0 = _mm512_add_epi64(acc0, _mm512_popcnt_epi64(_mm512_xor_si512(a0, b)));
    acc1 = _mm512_add_epi64(acc1, _mm512_popcnt_epi64(_mm512_xor_si512(a1, b)));
    acc2 = _mm512_add_epi64(acc2, _mm512_popcnt_epi64(_mm512_xor_si512(a2, b)));
    acc3 = _mm512_add_epi64(acc3, _mm512_popcnt_epi64(_mm512_xor_si512(a3, b)));
    b = _mm512_add_epi64(b, one);
  }
  double s = seconds_since(t0);
  alignas(64) uint64_t lanes[8];
  _mm512_store_si512(lanes, _mm512_add_epi64(_mm512_add_epi64(acc0, acc1), _mm512_add_epi64(acc2, acc3)));
  for (uint64_t lane : lanes) g_sink = g_sink + lane;
  return 2.0 * 512 * 4 * iters / s;
}

struct Operands {
  alignas(64) uint64_t a[5 * 8];  // five 512-bit registers' worth of random bits
};

// Runs `rate(ops)` on every thread at once (each with its own L1 operands) and on thread 0 alone;
// returns {one thread, all threads}, each the median of `trials`.
template <typename F>
std::pair<double, double> measure(F rate, int trials) {
  std::vector<double> solo, together;
  const int threads = omp_get_max_threads();
  std::vector<Operands> operands(threads);
  uint64_t seed = 0x9e3779b97f4a7c15ull;
  for (auto& o : operands) {
    for (uint64_t& word : o.a) {
      seed ^= seed << 13; seed ^= seed >> 7; seed ^= seed << 17;
      word = seed;
    }
  }
  for (int t = 0; t < trials; ++t) {
    solo.push_back(rate(operands[0]));
    double sum = 0;
#pragma omp parallel reduction(+ : sum)
    sum += rate(operands[omp_get_thread_num()]);
    together.push_back(sum);
  }
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  return {median(solo), median(together)};
}

}  // namespace

int main(int argc, char** argv) {
  const int trials = argc > 1 ? std::atoi(argv[1]) : 5;
  const int64_t reps = 4000000;  // ~0.1-0.3 s per measurement
  __builtin_cpu_init();
  const bool has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const bool has_vpopcnt = __builtin_cpu_supports("avx512vpopcntdq");
  std::printf("threads: %d; %s\n", omp_get_max_threads(), has_vpopcnt ? "avx512vpopcntdq" : has_avx2 ? "avx2" : "scalar");
  std::printf("%-34s %14s %14s\n", "G ops/s (2 per MAC)", "one thread", "all threads");
  auto row = [](const char* name, std::pair<double, double> r) {
    std::printf("%-34s %14.1f %14.1f\n", name, r.first / 1e9, r.second / 1e9);
    return r;
  };
  double fma_all = 0, best_all = 0;
  if (has_avx2) fma_all = row("fp32 FMA (registers)", measure([&](Operands&) { return fma_rate(reps * 4); }, trials)).second;
  best_all = std::max(best_all, row("xor+popcnt scalar", measure([&](Operands& o) { return scalar_rate(o.a, reps * 4); }, trials)).second);
  if (has_avx2) {
    best_all = std::max(best_all, row("xor+popcount avx2 lookup", measure([&](Operands& o) {
      return lookup_rate(o.a, reps * 2);
    }, trials)).second);
    best_all = std::max(best_all, row("xor+popcount avx2 harley-seal", measure([&](Operands& o) {
      return harley_seal_rate(o.a, reps * 2);
    }, trials)).second);
  }
  if (has_vpopcnt) {
    best_all = std::max(best_all, row("xor+popcount avx512 vpopcntdq", measure([&](Operands& o) {
      return vpopcnt_rate(o.a, reps * 4);
    }, trials)).second);
  }
  if (fma_all > 0) {
    std::printf("best xor+popcount / fp32 FMA, all threads: %.1fx (the largest XNOR-over-fp32 GEMM speed-up at "
                "both instruction ceilings)\n", best_all / fma_all);
  }
  std::printf("popc ceiling (T binary-op/s, all threads): %.4f\n", best_all / 1e12);
  return g_sink == 42 ? 1 : 0;
}
