// The timed loops of tools/cpu_peaks: fp32 FMA and XOR + popcount + accumulate from registers, each returning
// its rate and a checksum of all its accumulators, and measure(), which runs one on thread 0 and on every
// OpenMP thread at once. popc_peak.cpp prints them as the ceiling table; xnor_share.cpp times them beside
// bnnctl's XNOR GEMM. Each loop carries its own target attribute, so any build flags serve.
#pragma once
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

// Internal linkage: each tool is one translation unit that includes this once.
namespace cpu_peaks {
namespace {


// What a timed loop returns: its rate and the sum of all its accumulators (kept for the checksum).
struct Rate {
  double ops_per_s;
  double checksum;
};

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// ---- fp32 FMA, AVX2: ops = 2 * 8 lanes * CHAINS per iteration
constexpr int kAvx2Chains = 12;

[[maybe_unused]] __attribute__((target("avx2,fma"))) Rate fma_avx2_rate(int64_t iters) {
  __m256 acc[kAvx2Chains];
  for (int i = 0; i < kAvx2Chains; ++i) acc[i] = _mm256_set1_ps(0.001f * i);
  // acc -> acc * x + y converges to y / (1 - x) = 1e-4: no overflow, no denormals, never constant
  const __m256 x = _mm256_set1_ps(0.999f), y = _mm256_set1_ps(1e-7f);
  auto t0 = std::chrono::steady_clock::now();
  for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 32  // every chain in its own register, not an array in memory
    for (int i = 0; i < kAvx2Chains; ++i) acc[i] = _mm256_fmadd_ps(acc[i], x, y);
  }
  double s = seconds_since(t0);
  alignas(32) float lanes[8];
  double sum = 0;
  for (int i = 0; i < kAvx2Chains; ++i) {
    _mm256_store_ps(lanes, acc[i]);
    for (float lane : lanes) sum += lane;
  }
  return {2.0 * 8 * kAvx2Chains * iters / s, sum};
}

// ---- fp32 FMA, AVX-512: ops = 2 * 16 lanes * CHAINS per iteration
constexpr int kAvx512Chains = 24;

[[maybe_unused]] __attribute__((target("avx512f"))) Rate fma_avx512_rate(int64_t iters) {
  __m512 acc[kAvx512Chains];
  for (int i = 0; i < kAvx512Chains; ++i) acc[i] = _mm512_set1_ps(0.001f * i);
  const __m512 x = _mm512_set1_ps(0.999f), y = _mm512_set1_ps(1e-7f);
  auto t0 = std::chrono::steady_clock::now();
  for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 32  // every chain in its own register, not an array in memory
    for (int i = 0; i < kAvx512Chains; ++i) acc[i] = _mm512_fmadd_ps(acc[i], x, y);
  }
  double s = seconds_since(t0);
  alignas(64) float lanes[16];
  double sum = 0;
  for (int i = 0; i < kAvx512Chains; ++i) {
    _mm512_store_ps(lanes, acc[i]);
    for (float lane : lanes) sum += lane;
  }
  return {2.0 * 16 * kAvx512Chains * iters / s, sum};
}

// The popcount loops below XOR four operand registers a0..a3 with a b loaded from the L1 cache every four
// vectors (one of kBVectors, in turn), as a register-blocked GEMM reuses its loads: loads, not ALU work,
// bring the new operand, so what they measure is the ALU ceiling of each popcount method (an earlier
// version made b with an add per four vectors, an ALU op a GEMM does not pay; a GEMM then ran above it).

// The b operands: kBVectors 512-bit vectors after the four a vectors, taken in turn (all in the L1 cache).
constexpr int64_t kBVectors = 16;

inline const uint64_t* b_vector(const uint64_t* seed, int64_t index) { return seed + 32 + (index % kBVectors) * 8; }

inline uint64_t b_word(const uint64_t* seed, int64_t index) { return *b_vector(seed, index); }

// ---- scalar POPCNT
__attribute__((target("popcnt"))) Rate scalar_rate(const uint64_t* seed, int64_t iters) {
  const uint64_t a0 = seed[0], a1 = seed[1], a2 = seed[2], a3 = seed[3];
  uint64_t acc0 = 0, acc1 = 0, acc2 = 0, acc3 = 0;
  auto t0 = std::chrono::steady_clock::now();
  for (int64_t it = 0; it < iters; ++it) {
    uint64_t b = b_word(seed, it);
    acc0 += _mm_popcnt_u64(a0 ^ b);
    acc1 += _mm_popcnt_u64(a1 ^ b);
    acc2 += _mm_popcnt_u64(a2 ^ b);
    acc3 += _mm_popcnt_u64(a3 ^ b);
    // b stays in a general register: without this the compiler vectorizes the loop (with -march=native on an
    // AVX-512 VPOPCNTDQ CPU, into vpopcntq), and this row would measure the vector unit, not POPCNT
    asm volatile("" : "+r"(b));
  }
  double s = seconds_since(t0);
  return {2.0 * 64 * 4 * iters / s, static_cast<double>(acc0 + acc1 + acc2 + acc3)};
}

template <typename V>
double lane_sum_u64(const V& v) {
  uint64_t lanes[sizeof(V) / 8];
  std::memcpy(lanes, &v, sizeof(V));
  double sum = 0;
  for (uint64_t lane : lanes) sum += static_cast<double>(lane);
  return sum;
}

// ---- AVX2 nibble lookup: per vector xor, 2 and, shift, 2 vpshufb, 2 byte adds; vpsadbw every 8
__attribute__((target("avx2"))) inline __m256i lookup_count(__m256i v) {
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                       0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i low = _mm256_set1_epi8(0x0f);
  return _mm256_add_epi8(_mm256_shuffle_epi8(lut, _mm256_and_si256(v, low)),
                         _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(v, 4), low)));
}

__attribute__((target("avx2"))) Rate lookup_rate(const uint64_t* seed, int64_t iters) {
  const __m256i* v = reinterpret_cast<const __m256i*>(seed);
  const __m256i a0 = _mm256_loadu_si256(v), a1 = _mm256_loadu_si256(v + 1), a2 = _mm256_loadu_si256(v + 2),
                a3 = _mm256_loadu_si256(v + 3);
  __m256i total0 = _mm256_setzero_si256(), total1 = total0;
  auto t0 = std::chrono::steady_clock::now();
  for (int64_t it = 0; it < iters; ++it) {  // 8 vectors per iteration
    __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b_vector(seed, 2 * it)));
    __m256i bytes0 = lookup_count(_mm256_xor_si256(a0, b));
    __m256i bytes1 = lookup_count(_mm256_xor_si256(a1, b));
    bytes0 = _mm256_add_epi8(bytes0, lookup_count(_mm256_xor_si256(a2, b)));
    bytes1 = _mm256_add_epi8(bytes1, lookup_count(_mm256_xor_si256(a3, b)));
    b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b_vector(seed, 2 * it + 1)));
    bytes0 = _mm256_add_epi8(bytes0, lookup_count(_mm256_xor_si256(a0, b)));
    bytes1 = _mm256_add_epi8(bytes1, lookup_count(_mm256_xor_si256(a1, b)));
    bytes0 = _mm256_add_epi8(bytes0, lookup_count(_mm256_xor_si256(a2, b)));
    bytes1 = _mm256_add_epi8(bytes1, lookup_count(_mm256_xor_si256(a3, b)));
    total0 = _mm256_add_epi64(total0, _mm256_sad_epu8(bytes0, _mm256_setzero_si256()));
    total1 = _mm256_add_epi64(total1, _mm256_sad_epu8(bytes1, _mm256_setzero_si256()));
  }
  double s = seconds_since(t0);
  return {2.0 * 256 * 8 * iters / s, lane_sum_u64(total0) + lane_sum_u64(total1)};
}

// ---- AVX2 Harley-Seal: a carry-save adder tree over 16 vectors, one lookup count per 16 (Mula et al.)
__attribute__((target("avx2"))) inline void csa(__m256i& high, __m256i& low, __m256i a, __m256i b, __m256i c) {
  const __m256i u = _mm256_xor_si256(a, b);
  high = _mm256_or_si256(_mm256_and_si256(a, b), _mm256_and_si256(u, c));
  low = _mm256_xor_si256(u, c);
}

// Eight vectors a_i ^ b into the tree: four CSAs into ones, two into twos, one into fours; out: their eights.
__attribute__((target("avx2"))) inline void add_eight(__m256i& eights_out, __m256i& ones, __m256i& twos,
                                                      __m256i& fours, const __m256i (&a)[4], const uint64_t* seed,
                                                      int64_t& b_index) {
  __m256i fours_half[2];
  for (__m256i& fours_out : fours_half) {
    const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b_vector(seed, b_index++)));
    __m256i twos_a, twos_b;
    csa(twos_a, ones, ones, _mm256_xor_si256(a[0], b), _mm256_xor_si256(a[1], b));
    csa(twos_b, ones, ones, _mm256_xor_si256(a[2], b), _mm256_xor_si256(a[3], b));
    csa(fours_out, twos, twos, twos_a, twos_b);
  }
  csa(eights_out, fours, fours, fours_half[0], fours_half[1]);
}

__attribute__((target("avx2"))) double count_bits(__m256i x) {
  return lane_sum_u64(_mm256_sad_epu8(lookup_count(x), _mm256_setzero_si256()));
}

__attribute__((target("avx2"))) Rate harley_seal_rate(const uint64_t* seed, int64_t iters) {
  const __m256i* v = reinterpret_cast<const __m256i*>(seed);
  const __m256i a[4] = {_mm256_loadu_si256(v), _mm256_loadu_si256(v + 1), _mm256_loadu_si256(v + 2),
                        _mm256_loadu_si256(v + 3)};
  int64_t b_index = 0;
  __m256i total = _mm256_setzero_si256();
  __m256i ones = _mm256_setzero_si256(), twos = ones, fours = ones, eights = ones;
  auto t0 = std::chrono::steady_clock::now();
  for (int64_t it = 0; it < iters; ++it) {  // 16 vectors per iteration
    __m256i eights_a, eights_b, sixteens;
    add_eight(eights_a, ones, twos, fours, a, seed, b_index);
    add_eight(eights_b, ones, twos, fours, a, seed, b_index);
    csa(sixteens, eights, eights, eights_a, eights_b);
    total = _mm256_add_epi64(total, _mm256_sad_epu8(lookup_count(sixteens), _mm256_setzero_si256()));
  }
  double s = seconds_since(t0);
  // the full count: 16 * sixteens (in total) + 8 * eights + 4 * fours + 2 * twos + ones
  double sum = 16 * lane_sum_u64(total) + 8 * count_bits(eights) + 4 * count_bits(fours) + 2 * count_bits(twos) +
               count_bits(ones);
  return {2.0 * 256 * 16 * iters / s, sum};
}

// ---- AVX-512 VPOPCNTDQ
__attribute__((target("avx512f,avx512vpopcntdq"))) Rate vpopcnt_rate(const uint64_t* seed, int64_t iters) {
  const __m512i* v = reinterpret_cast<const __m512i*>(seed);
  const __m512i a0 = _mm512_loadu_si512(v), a1 = _mm512_loadu_si512(v + 1), a2 = _mm512_loadu_si512(v + 2),
                a3 = _mm512_loadu_si512(v + 3);
  __m512i acc0 = _mm512_setzero_si512(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
  auto t0 = std::chrono::steady_clock::now();
  for (int64_t it = 0; it < iters; ++it) {  // 4 vectors per iteration
    const __m512i b = _mm512_loadu_si512(b_vector(seed, it));
    acc0 = _mm512_add_epi64(acc0, _mm512_popcnt_epi64(_mm512_xor_si512(a0, b)));
    acc1 = _mm512_add_epi64(acc1, _mm512_popcnt_epi64(_mm512_xor_si512(a1, b)));
    acc2 = _mm512_add_epi64(acc2, _mm512_popcnt_epi64(_mm512_xor_si512(a2, b)));
    acc3 = _mm512_add_epi64(acc3, _mm512_popcnt_epi64(_mm512_xor_si512(a3, b)));
  }
  double s = seconds_since(t0);
  return {2.0 * 512 * 4 * iters / s, lane_sum_u64(acc0) + lane_sum_u64(acc1) + lane_sum_u64(acc2) + lane_sum_u64(acc3)};
}

struct Operands {
  alignas(64) uint64_t a[(4 + kBVectors) * 8];  // the a registers' bits, then the b vectors (512 bits each)
};

double g_checksum = 0;  // every accumulator of every run, printed at the end

// Runs `rate(ops)` on every thread at once (each with its own L1 operands) and on thread 0 alone,
// after one untimed run of each; returns {one thread, all threads}, each the median of `trials`.
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
  double checksum = 0;
  auto all_threads = [&]() {
    double sum = 0, check = 0;
#pragma omp parallel reduction(+ : sum, check)
    {
      Rate r = rate(operands[omp_get_thread_num()]);
      sum += r.ops_per_s;
      check += r.checksum;
    }
    checksum += check;
    return sum;
  };
  checksum += rate(operands[0]).checksum;  // warm-up: clocks up, code and operands cached
  all_threads();
  for (int t = 0; t < trials; ++t) {
    Rate r = rate(operands[0]);
    solo.push_back(r.ops_per_s);
    checksum += r.checksum;
    together.push_back(all_threads());
  }
  g_checksum += checksum;
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  return {median(solo), median(together)};
}

}  // namespace
}  // namespace cpu_peaks
