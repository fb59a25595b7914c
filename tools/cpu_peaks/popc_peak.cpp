// x86-64 CPU ceilings for the XNOR-popcount GEMM against fp32, measured on this machine (standalone):
//   g++ -O3 -march=native -fopenmp tools/cpu_peaks/popc_peak.cpp -o popc_peak && ./popc_peak [TRIALS] [--json] [--quick]
// Prints, per thread and for all OpenMP threads together (OMP_NUM_THREADS; one per core by default):
//   1) fp32 FMA from registers, AVX2 (12 independent 8-lane chains) and, where the CPU has it, AVX-512
//      (24 independent 16-lane chains): the rate no fp32 GEMM can beat. A chain is one accumulator that
//      each FMA reads and writes, so one chain runs at one FMA per FMA latency; a core keeps its FMA
//      units busy only with latency x FMAs per cycle chains in flight (4 x 2 = 8 on current Intel and
//      AMD cores, 5 x 2 = 10 on Haswell). 12 and 24 cover that with room, in 14 of 16 ymm and 26 of 32
//      zmm registers, so no chain spills. On a CPU with two 512-bit FMA units (Xeon Skylake-SP and
//      later) AVX-512 doubles the AVX2 rate, and that is what torch's fp32 matmul (oneDNN / MKL) uses:
//      an AVX2-only figure there is half the ceiling (and below torch). The fp32 ceiling is the best row.
//   2) XOR + popcount + accumulate from registers, by each method this ISA offers:
//      scalar 64-bit POPCNT, AVX2 nibble lookup (vpshufb), AVX2 Harley-Seal carry-save adders,
//      and AVX-512 VPOPCNTDQ where the CPU has it.
// Rates are in G binary-op/s with 2 ops per bit multiply-accumulate (the convention of `bnnctl bench`
// and of FLOP/s), so "best popcount / fp32 FMA" is the largest XNOR-over-fp32 GEMM speed-up this core
// can give when both kernels run at their instruction ceilings (loads, packing and cache misses only
// lower either side). Each measurement runs once untimed first (clock ramp-up, AVX frequency licence)
// and reports the median of TRIALS (default 5). Every accumulator of every loop is summed, all lanes,
// into the checksum printed at the end, so the compiler cannot drop any of the timed work.
// Run it on an otherwise idle machine: the rates are measured one after another, so a neighbour's load
// skews their ratio. --json prints a `cpu-peaks` record instead of the table (see README.md): save it as
// results/bench/DATE-cpu-peaks.json and `bnnctl bench --kernel` on this machine reads its popcount ceiling.
// --quick: a tenth of the work per measurement (a smoke test; the rates are noisier).
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

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

__attribute__((target("avx2,fma"))) Rate fma_avx2_rate(int64_t iters) {
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

__attribute__((target("avx512f"))) Rate fma_avx512_rate(int64_t iters) {
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

// "model name", "cpu family" and "model" of the first processor in /proc/cpuinfo (empty / -1 if absent).
struct CpuId {
  std::string model_name;
  int family = -1, model = -1;
};

CpuId read_cpuinfo() {
  CpuId id;
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  auto value = [](const std::string& l) {
    std::string v = l.substr(l.find(':') + 1);
    const auto first = v.find_first_not_of(" \t"), last = v.find_last_not_of(" \t\r");
    return first == std::string::npos ? std::string() : v.substr(first, last - first + 1);
  };
  while (std::getline(in, line)) {
    if (line.empty()) break;  // the first processor's block only
    const std::string key = line.substr(0, line.find(':'));
    const std::string k = key.substr(0, key.find_last_not_of(" \t") + 1);
    if (k == "model name") id.model_name = value(line);
    else if (k == "cpu family") id.family = std::atoi(value(line).c_str());
    else if (k == "model") id.model = std::atoi(value(line).c_str());
  }
  return id;
}

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    if (static_cast<unsigned char>(c) < 0x20) continue;
    out += c;
  }
  return out + "\"";
}

struct Row {
  std::string name;
  std::pair<double, double> rate;  // ops/s: one thread, all threads
};

}  // namespace

int main(int argc, char** argv) {
  int trials = 5;
  bool json = false, quick = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--json") == 0) json = true;
    else if (std::strcmp(argv[i], "--quick") == 0) quick = true;
    else if (std::atoi(argv[i]) > 0) trials = std::atoi(argv[i]);
    else {
      std::fprintf(stderr, "usage: %s [TRIALS] [--json] [--quick]\n", argv[0]);
      return 2;
    }
  }
  const int64_t reps = quick ? 400000 : 4000000;  // ~0.02-0.1 s per measurement (a tenth with --quick)
  __builtin_cpu_init();
  const bool has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const bool has_avx512 = __builtin_cpu_supports("avx512f");
  const bool has_vpopcnt = has_avx512 && __builtin_cpu_supports("avx512vpopcntdq");
  const int threads = omp_get_max_threads();
  std::string isa = has_vpopcnt ? "avx512f avx512vpopcntdq" : has_avx512 ? "avx512f" : "";
  if (has_avx2) isa += isa.empty() ? "avx2 fma" : " avx2 fma";
  if (isa.empty()) isa = "scalar";

  std::vector<Row> rows;
  auto row = [&](const char* name, std::pair<double, double> r) {
    rows.push_back({name, r});
    if (!json) std::printf("%-34s %14.1f %14.1f\n", name, r.first / 1e9, r.second / 1e9);
    return r;
  };
  if (!json) {
    std::printf("threads: %d; %s\n", threads, isa.c_str());
    std::printf("%-34s %14s %14s\n", "G ops/s (2 per MAC)", "one thread", "all threads");
  }
  double fma_all = 0, best_all = 0;
  const char* fma_best = "none";
  if (has_avx2) {
    fma_all = row("fp32 FMA avx2 (registers)", measure([&](Operands&) { return fma_avx2_rate(reps * 4); }, trials))
                  .second;
    fma_best = "avx2";
  }
  if (has_avx512) {
    double r = row("fp32 FMA avx512 (registers)", measure([&](Operands&) { return fma_avx512_rate(reps * 2); },
                                                          trials)).second;
    if (r > fma_all) fma_all = r, fma_best = "avx512";
  }
  best_all = std::max(best_all, row("xor+popcnt scalar", measure([&](Operands& o) { return scalar_rate(o.a, reps * 4); },
                                                                 trials)).second);
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

  const CpuId id = read_cpuinfo();
  // bnnctl's hardware string for a CPU: "<model name> (<threads> threads)", threads = torch's (OMP) count
  const std::string hardware = (id.model_name.empty() ? std::string("unknown CPU") : id.model_name) + " (" +
                               std::to_string(threads) + " threads)";
  if (!json) {
    if (fma_all > 0) {
      std::printf("fp32 FMA ceiling (GFLOP/s, all threads): %.1f (%s)\n", fma_all / 1e9, fma_best);
      std::printf("best xor+popcount / fp32 FMA, all threads: %.1fx (the largest XNOR-over-fp32 GEMM speed-up at "
                  "both instruction ceilings)\n", best_all / fma_all);
    }
    std::printf("popc ceiling (T binary-op/s, all threads): %.4f\n", best_all / 1e12);
    std::printf("hardware: %s; checksum of every accumulator: %.17g\n", hardware.c_str(), g_checksum);
    return 0;
  }
  char date[32];
  const std::time_t now = std::time(nullptr);
  std::strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%S+00:00", std::gmtime(&now));
  std::printf("{\n \"kind\": \"cpu-peaks\",\n \"command\": %s,\n \"date\": \"%s\",\n \"hardware\": %s,\n",
              json_string(std::string("popc_peak ") + std::to_string(trials) + (quick ? " --quick" : "") +
                          " --json (tools/cpu_peaks/popc_peak.cpp, OMP_NUM_THREADS=" + std::to_string(threads) + ")")
                  .c_str(), date, json_string(hardware).c_str());
  std::printf(" \"machine\": {\"model_name\": %s, \"cpu_family\": %d, \"model\": %d},\n",
              json_string(id.model_name).c_str(), id.family, id.model);
  std::printf(" \"isa\": %s,\n \"units\": \"G binary-op/s (2 per bit multiply-accumulate) or GFLOP/s (2 per FMA "
              "lane); median of %d\",\n", json_string(isa).c_str(), trials);
  std::printf(" \"threads\": {\n  \"%d\": {\n   \"rows\": {\n", threads);
  for (size_t i = 0; i < rows.size(); ++i) {
    std::printf("    %s: {\"one_thread\": %.1f, \"all_threads\": %.1f}%s\n", json_string(rows[i].name).c_str(),
                rows[i].rate.first / 1e9, rows[i].rate.second / 1e9, i + 1 < rows.size() ? "," : "");
  }
  std::printf("   },\n   \"fp32_fma_ceiling_gflops\": %.1f,\n   \"fp32_fma_ceiling_isa\": \"%s\",\n",
              fma_all / 1e9, fma_best);
  std::printf("   \"popc_ceiling_tbops\": %.4f,\n   \"best_popcount_over_fp32_fma\": %.1f\n  }\n },\n",
              best_all / 1e12, fma_all > 0 ? best_all / fma_all : 0.0);
  std::printf(" \"checksum\": %.17g\n}\n", g_checksum);
  return 0;
}
