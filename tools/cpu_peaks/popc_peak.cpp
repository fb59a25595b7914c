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
//   3) read bandwidth (read_bandwidth.h), in GB/s: a streaming read of a buffer that fits the L2 cache (half of
//      it per thread), one that fits the L3 (half of it), and one of at least 64 MB and twice the L3 (memory);
//      then a ladder of buffer sizes from 256 KiB to the memory one in steps of sqrt(2), which bnnctl bench reads
//      a model's floor from (the rate of a buffer the size of its weights).
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
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "peak_loops.h"
#include "read_bandwidth.h"

namespace {

using namespace cpu_peaks;

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

  const Caches caches = read_caches();
  const std::vector<LevelRead> reads = read_bandwidths(caches, threads, trials, quick ? 0.01 : 0.1, g_checksum);
  const std::vector<SizedRead> ladder = read_bandwidth_ladder(caches, threads, trials, quick ? 0.01 : 0.05, g_checksum);
  if (!json) {
    std::printf("%-34s %14s %14s\n", "read bandwidth, GB/s", "one thread", "all threads");
    for (const LevelRead& r : reads) {
      const std::string name = "read " + r.level + " (" + std::to_string(r.bytes_one >> 10) + " / " +
                               std::to_string(r.bytes_all >> 10) + " KiB)";
      std::printf("%-34s %14.1f %14.1f\n", name.c_str(), r.one / 1e9, r.all / 1e9);
    }
    for (const SizedRead& r : ladder) {
      const std::string name = "read " + std::to_string(r.bytes >> 10) + " KiB";
      std::printf("%-34s %14.1f %14.1f\n", name.c_str(), r.one / 1e9, r.all / 1e9);
    }
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
              "lane); median of %d; read_bandwidth_gbs: GB/s, best of %d\",\n", json_string(isa).c_str(), trials,
              trials);
  std::printf(" \"threads\": {\n  \"%d\": {\n   \"rows\": {\n", threads);
  for (size_t i = 0; i < rows.size(); ++i) {
    std::printf("    %s: {\"one_thread\": %.1f, \"all_threads\": %.1f}%s\n", json_string(rows[i].name).c_str(),
                rows[i].rate.first / 1e9, rows[i].rate.second / 1e9, i + 1 < rows.size() ? "," : "");
  }
  std::printf("   },\n   \"fp32_fma_ceiling_gflops\": %.1f,\n   \"fp32_fma_ceiling_isa\": \"%s\",\n",
              fma_all / 1e9, fma_best);
  std::printf("   \"popc_ceiling_tbops\": %.4f,\n   \"best_popcount_over_fp32_fma\": %.1f,\n",
              best_all / 1e12, fma_all > 0 ? best_all / fma_all : 0.0);
  std::printf("   \"read_bandwidth_gbs\": {\n");
  for (size_t i = 0; i < reads.size(); ++i) {
    const LevelRead& r = reads[i];
    std::printf("    \"%s\": {\"one_thread\": %.4g, \"all_threads\": %.4g, \"buffer_bytes_one_thread\": %lld, "
                "\"buffer_bytes_all_threads\": %lld}%s\n", r.level.c_str(), r.one / 1e9, r.all / 1e9,
                static_cast<long long>(r.bytes_one), static_cast<long long>(r.bytes_all),
                i + 1 < reads.size() ? "," : "");
  }
  std::printf("   },\n   \"read_bandwidth_by_size_gbs\": [\n");
  for (size_t i = 0; i < ladder.size(); ++i) {
    std::printf("    {\"bytes\": %lld, \"one_thread\": %.4g, \"all_threads\": %.4g}%s\n",
                static_cast<long long>(ladder[i].bytes), ladder[i].one / 1e9, ladder[i].all / 1e9,
                i + 1 < ladder.size() ? "," : "");
  }
  std::printf("   ]\n  }\n },\n");
  std::printf(" \"caches\": {\"l2_bytes_per_core\": %lld, \"l3_bytes\": %lld, \"source\": \"%s\"},\n",
              static_cast<long long>(caches.l2), static_cast<long long>(caches.l3), caches.source.c_str());
  std::printf(" \"checksum\": %.17g\n}\n", g_checksum);
  return 0;
}
