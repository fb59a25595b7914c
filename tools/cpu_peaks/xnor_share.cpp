// The CPU XNOR GEMM's share of its instruction set's XOR + popcount ceiling, measured side by side in one process.
//   g++ -O3 -fopenmp -Icuda tools/cpu_peaks/xnor_share.cpp cuda/cpu/*.cpp -o xnor_share
//   ./xnor_share [M N K] [--repeats R] [--json]
// For every instruction set this CPU runs (AVX-512 VPOPCNTDQ, AVX2, scalar), each repeat times that set's
// ceiling rows (peak_loops.h, all OpenMP threads; AVX2: the better of lookup and Harley-Seal, as `bnnctl bench`
// takes it) and then bnnctl's XNOR GEMM forced onto it (cuda/cpu/, the extension's own code, with
// its panels and tiles; threads over tiles as the extension splits them). The share of a repeat is the GEMM's
// rate over the ceiling measured a moment before, and the tool reports the median share over the repeats.
// `bnnctl bench --kernel` divides by a ceiling recorded at another time: on a VM whose neighbours come and go,
// its shares move by tens of percent between runs; pairing each GEMM with a ceiling of the same moment and
// taking the median over repeats is steadier (single repeats still scatter: the record keeps their range).
// The GEMM is timed on its second run, after the packing (which `bnnctl bench` reports apart). Operands are random; every product is
// checked against the scalar path once, so a wrong kernel cannot report a speed.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <new>
#include <random>
#include <string>
#include <vector>

#include "cpu/xnor_kernels.h"
#include "peak_loops.h"

namespace {

using bnn_cpu::Isa;

struct Problem {
  int64_t m, n, k, words;
  std::vector<uint64_t> a, b;  // packed rows
};

// 64-byte aligned, as torch's CPU allocator aligns tensors: a vector's 16-byte alignment splits a third of the
// AVX2 and every AVX-512 panel load across two cache lines (the AVX-512 GEMM ran measurably slower so).
template <typename T>
struct CacheLineAllocator {
  using value_type = T;
  CacheLineAllocator() = default;
  template <typename U>
  CacheLineAllocator(const CacheLineAllocator<U>&) {}
  T* allocate(size_t n) {
    void* p = std::aligned_alloc(64, (n * sizeof(T) + 63) / 64 * 64);
    if (!p) throw std::bad_alloc();
    return static_cast<T*>(p);
  }
  void deallocate(T* p, size_t) { std::free(p); }
  bool operator==(const CacheLineAllocator&) const { return true; }
  bool operator!=(const CacheLineAllocator&) const { return false; }
};
template <typename T>
using AlignedVector = std::vector<T, CacheLineAllocator<T>>;

// The rate of one XNOR GEMM on `isa`, in binary ops per second; fills c (m x n).
double gemm_rate(Isa isa, const Problem& p, AlignedVector<int32_t>& c) {
  const bnn_cpu::PanelShape panel = bnn_cpu::panel_shape(isa), tile = bnn_cpu::xnor_tile(isa, p.words);
  const int64_t a_panels = (p.m + panel.rows - 1) / panel.rows, b_panels = (p.n + panel.cols - 1) / panel.cols;
  static AlignedVector<uint64_t> pa, pb;  // kept between calls: no fresh pages in the timed region
  pa.resize(a_panels * p.words * panel.rows);
  pb.resize(b_panels * p.words * panel.cols);
  bnn_cpu::pack_panels(p.a.data(), p.m, p.words, p.k, panel.rows, 0, a_panels, pa.data());
  bnn_cpu::pack_b_panels(isa, p.b.data(), p.n, p.words, p.k, 0, b_panels, pb.data());
  const int64_t tiles_m = (p.m + tile.rows - 1) / tile.rows, tiles_n = (p.n + tile.cols - 1) / tile.cols;
  auto product = [&] {
#pragma omp parallel for schedule(static)  // contiguous ranges of tiles per thread, as at::parallel_for splits
    for (int64_t t = 0; t < tiles_m * tiles_n; ++t) {
      const int64_t m0 = (t % tiles_m) * tile.rows, n0 = (t / tiles_m) * tile.cols;
      bnn_cpu::xnor_panels(isa, pa.data(), pb.data(), p.words, p.k, m0, std::min(p.m, m0 + tile.rows), n0,
                           std::min(p.n, n0 + tile.cols), c.data(), p.n);
    }
  };
  product();  // untimed: the operands and c in the caches as in back-to-back calls, the clocks up
  const auto t0 = std::chrono::steady_clock::now();
  product();
  return 2.0 * p.m * p.n * p.k / cpu_peaks::seconds_since(t0);
}

// The best of `isa`'s ceiling rows on all threads, one trial each.
double ceiling_rate(Isa isa, int64_t reps) {
  using namespace cpu_peaks;
  switch (isa) {
    case Isa::avx512:
      return measure([&](Operands& o) { return vpopcnt_rate(o.a, reps * 4); }, 1).second;
    case Isa::avx2:
      return std::max(measure([&](Operands& o) { return lookup_rate(o.a, reps * 2); }, 1).second,
                      measure([&](Operands& o) { return harley_seal_rate(o.a, reps * 2); }, 1).second);
    default:
      return measure([&](Operands& o) { return scalar_rate(o.a, reps * 4); }, 1).second;
  }
}

const char* ceiling_name(Isa isa) {
  switch (isa) {
    case Isa::avx512: return "xor+popcount avx512 vpopcntdq";
    case Isa::avx2: return "best of xor+popcount avx2 lookup / harley-seal";
    default: return "xor+popcnt scalar";
  }
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

std::string shell_line(const char* command) {
  std::string out;
  if (FILE* pipe = popen(command, "r")) {
    char buf[256];
    while (std::fgets(buf, sizeof buf, pipe)) out += buf;
    pclose(pipe);
  }
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  return out;
}

std::string model_name() {
  const std::string name = shell_line("grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'");
  return name.empty() ? "unknown CPU" : name;
}

}  // namespace

int main(int argc, char** argv) {
  Problem p{1024, 1024, 4096, 0, {}, {}};
  int repeats = 9;
  bool json = false;
  std::vector<int64_t> dims;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--json") == 0) json = true;
    else if (std::strcmp(argv[i], "--repeats") == 0 && i + 1 < argc) repeats = std::atoi(argv[++i]);
    else if (std::atoll(argv[i]) > 0) dims.push_back(std::atoll(argv[i]));
    else dims.push_back(-1);
  }
  if ((!dims.empty() && dims.size() != 3) || repeats < 1 ||
      std::any_of(dims.begin(), dims.end(), [](int64_t d) { return d <= 0; })) {
    std::fprintf(stderr, "usage: %s [M N K] [--repeats R] [--json]\n", argv[0]);
    return 2;
  }
  if (!dims.empty()) p.m = dims[0], p.n = dims[1], p.k = dims[2];
  p.words = (p.k + 63) / 64;
  std::mt19937_64 random(12345);
  p.a.resize(p.m * p.words);
  p.b.resize(p.n * p.words);
  for (uint64_t& w : p.a) w = random();
  for (uint64_t& w : p.b) w = random();

  std::vector<Isa> isas;
  for (Isa isa : {Isa::avx512, Isa::avx2, Isa::scalar})
    if (bnn_cpu::isa_supported(isa)) isas.push_back(isa);
  AlignedVector<int32_t> reference(p.m * p.n), c(p.m * p.n);
  gemm_rate(Isa::scalar, p, reference);
  for (Isa isa : isas) {
    std::fill(c.begin(), c.end(), 0);
    gemm_rate(isa, p, c);
    if (c != reference) {
      std::fprintf(stderr, "the %s GEMM differs from the scalar one: no rates reported\n", bnn_cpu::isa_name(isa));
      return 1;
    }
  }
  const int64_t reps = 1000000;  // a quarter of popc_peak's: 5-25 ms per ceiling loop, close to the GEMM's time
  struct Result {
    std::vector<double> ceiling, gemm, share;
  };
  std::vector<Result> results(isas.size());
  for (int r = 0; r < repeats; ++r)
    for (size_t i = 0; i < isas.size(); ++i) {
      const double ceiling = ceiling_rate(isas[i], reps), gemm = gemm_rate(isas[i], p, c);
      results[i].ceiling.push_back(ceiling);
      results[i].gemm.push_back(gemm);
      results[i].share.push_back(gemm / ceiling);
    }

  const int threads = omp_get_max_threads();
  const std::string hardware = model_name() + " (" + std::to_string(threads) + " threads)";
  if (!json) {
    std::printf("%s; %ld x %ld x %ld; %d repeats, each: ceiling rows, then the GEMM\n", hardware.c_str(), p.m, p.n,
                p.k, repeats);
    std::printf("%-16s %-48s %10s %10s %10s %14s\n", "isa", "ceiling row", "ceiling T", "GEMM ms", "GEMM T",
                "share (range)");
    for (size_t i = 0; i < isas.size(); ++i) {
      const Result& res = results[i];
      const double gemm = median(res.gemm);
      std::printf("%-16s %-48s %10.3f %10.3f %10.3f %6.1f%% (%.0f-%.0f%%)\n", bnn_cpu::isa_name(isas[i]),
                  ceiling_name(isas[i]), median(res.ceiling) / 1e12, 2.0 * p.m * p.n * p.k / gemm * 1e3, gemm / 1e12,
                  100 * median(res.share), 100 * *std::min_element(res.share.begin(), res.share.end()),
                  100 * *std::max_element(res.share.begin(), res.share.end()));
    }
    std::printf("checksum of the ceiling loops: %.17g\n", cpu_peaks::g_checksum);
    return 0;
  }
  char date[32];
  const std::time_t now = std::time(nullptr);
  std::strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%S+00:00", std::gmtime(&now));
  const std::string commit = shell_line("git rev-parse HEAD 2>/dev/null");
  const bool dirty = !shell_line("git status --porcelain --untracked-files=no 2>/dev/null").empty();
  std::printf("{\n \"kind\": \"cpu-xnor-share\",\n \"command\": \"xnor_share %ld %ld %ld --repeats %d --json "
              "(tools/cpu_peaks/xnor_share.cpp, OMP_NUM_THREADS=%d)\",\n",
              p.m, p.n, p.k, repeats, threads);
  std::printf(" \"date\": \"%s\",\n \"hardware\": \"%s\",\n \"commit\": \"%s%s\",\n", date, hardware.c_str(),
              commit.c_str(), dirty ? "+dirty" : "");
  std::printf(" \"shape\": [%ld, %ld, %ld],\n \"threads\": %d,\n \"units\": \"T binary-op/s (2 per bit "
              "multiply-accumulate); share = GEMM / the ceiling measured just before it, median over repeats\",\n",
              p.m, p.n, p.k, threads);
  std::printf(" \"isas\": {\n");
  for (size_t i = 0; i < isas.size(); ++i) {
    const Result& res = results[i];
    std::printf("  \"%s\": {\"ceiling_row\": \"%s\", \"ceiling_tbops\": %.4f, \"gemm_ms\": %.4f, \"gemm_tbops\": %.4f, "
                "\"share\": %.4f, \"share_min\": %.4f, \"share_max\": %.4f}%s\n",
                bnn_cpu::isa_name(isas[i]), ceiling_name(isas[i]), median(res.ceiling) / 1e12,
                2.0 * p.m * p.n * p.k / median(res.gemm) * 1e3, median(res.gemm) / 1e12, median(res.share),
                *std::min_element(res.share.begin(), res.share.end()),
                *std::max_element(res.share.begin(), res.share.end()), i + 1 < isas.size() ? "," : "");
  }
  std::printf(" },\n \"checksum\": %.17g\n}\n", cpu_peaks::g_checksum);
  return 0;
}
