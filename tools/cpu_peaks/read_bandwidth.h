// Read bandwidth of each level of the memory hierarchy: a streaming read of a buffer that fits the L2 cache, one
// that fits the L3 cache, and one far larger than the L3 (at least 64 MB), on thread 0 alone and on every OpenMP
// thread at once. It is the floor of a call that reads its weights once: a batch-1 inference can go no faster than
// its packed weights' bytes over the bandwidth of the level they fit in (bnnctl bench --model ... --batch 1 divides
// by it). popc_peak.cpp prints and records it beside the instruction ceilings.
#pragma once
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include <unistd.h>

namespace cpu_peaks {
namespace {

// The cache sizes reads are sized by: per-core L2 and the L3 the first core shares, in bytes.
struct Caches {
  int64_t l2 = 0, l3 = 0;
  std::string source;
};

// "512K", "32768K", "1M" (sysfs) -> bytes; 0 if unreadable.
int64_t parse_size(const std::string& text) {
  char* end = nullptr;
  const long long value = std::strtoll(text.c_str(), &end, 10);
  if (value <= 0 || end == text.c_str()) return 0;
  const char unit = *end;
  return value * (unit == 'K' ? 1024LL : unit == 'M' ? 1024LL * 1024 : unit == 'G' ? 1024LL * 1024 * 1024 : 1LL);
}

std::string first_line(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  return line;
}

// The first CPU's unified or data caches from sysfs (what the kernel says this CPU, or this VM's vCPU, has), else
// sysconf's; a level neither reports is 0 and is not measured.
Caches read_caches() {
  Caches c;
  for (int index = 0; index < 8; ++index) {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(index) + "/";
    const std::string level = first_line(dir + "level"), type = first_line(dir + "type");
    if (level.empty() || type == "Instruction") continue;
    const int64_t size = parse_size(first_line(dir + "size"));
    if (level == "2") c.l2 = size;
    if (level == "3") c.l3 = size;
  }
  c.source = "sysfs";
  if (c.l2 <= 0 && c.l3 <= 0) {
#if defined(_SC_LEVEL2_CACHE_SIZE) && defined(_SC_LEVEL3_CACHE_SIZE)
    c.l2 = std::max<long>(0, sysconf(_SC_LEVEL2_CACHE_SIZE));
    c.l3 = std::max<long>(0, sysconf(_SC_LEVEL3_CACHE_SIZE));
    c.source = "sysconf";
#endif
  }
  return c;
}

constexpr int64_t kChunk = 256;  // bytes per loop iteration: eight 32-byte loads into four accumulators

// Sums n bytes (a multiple of kChunk, 32-byte aligned) as 64-bit lanes, `passes` times: every byte is loaded and
// feeds the result, so no load is dead code. AVX2 where the CPU has it (two 32-byte loads a cycle cover what an
// L2 delivers on current cores), else 64-bit scalar loads.
__attribute__((target("avx2"))) uint64_t sum_avx2(const uint8_t* p, int64_t n, int64_t passes) {
  __m256i acc0 = _mm256_setzero_si256(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
  for (int64_t pass = 0; pass < passes; ++pass) {
    for (int64_t i = 0; i < n; i += kChunk) {
      const __m256i* v = reinterpret_cast<const __m256i*>(p + i);
      acc0 = _mm256_add_epi64(acc0, _mm256_add_epi64(_mm256_load_si256(v), _mm256_load_si256(v + 4)));
      acc1 = _mm256_add_epi64(acc1, _mm256_add_epi64(_mm256_load_si256(v + 1), _mm256_load_si256(v + 5)));
      acc2 = _mm256_add_epi64(acc2, _mm256_add_epi64(_mm256_load_si256(v + 2), _mm256_load_si256(v + 6)));
      acc3 = _mm256_add_epi64(acc3, _mm256_add_epi64(_mm256_load_si256(v + 3), _mm256_load_si256(v + 7)));
    }
    asm volatile("" : "+x"(acc0), "+x"(acc1), "+x"(acc2), "+x"(acc3));  // each pass reads the memory again
  }
  alignas(32) uint64_t lanes[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes),
                     _mm256_add_epi64(_mm256_add_epi64(acc0, acc1), _mm256_add_epi64(acc2, acc3)));
  return lanes[0] + lanes[1] + lanes[2] + lanes[3];
}

uint64_t sum_scalar(const uint8_t* p, int64_t n, int64_t passes) {
  uint64_t acc[4] = {0, 0, 0, 0};
  for (int64_t pass = 0; pass < passes; ++pass) {
    for (int64_t i = 0; i < n; i += 32) {
      uint64_t w[4];
      std::memcpy(w, p + i, 32);
      for (int j = 0; j < 4; ++j) acc[j] += w[j];
    }
    asm volatile("" : "+r"(acc[0]), "+r"(acc[1]), "+r"(acc[2]), "+r"(acc[3]));
  }
  return acc[0] + acc[1] + acc[2] + acc[3];
}

uint64_t sum_bytes(const uint8_t* p, int64_t n, int64_t passes) {
  return __builtin_cpu_supports("avx2") ? sum_avx2(p, n, passes) : sum_scalar(p, n, passes);
}

// One buffer of `bytes`, read by `threads` threads together, each its own contiguous slice (first touched by that
// thread), `passes` times; returns bytes/s over the whole region, from the slowest thread's end.
int64_t slice_bytes(int64_t wanted, int threads) {
  return std::max<int64_t>(kChunk, wanted / threads / kChunk * kChunk);
}

struct SharedRead {
  uint8_t* data = nullptr;
  int64_t bytes = 0, slice = 0;
  int threads = 1;

  SharedRead(int64_t wanted, int threads_) : threads(threads_) {
    slice = slice_bytes(wanted, threads);
    bytes = slice * threads;
    data = static_cast<uint8_t*>(std::aligned_alloc(64, static_cast<size_t>(bytes)));
#pragma omp parallel num_threads(threads)
    {
      uint8_t* mine = data + slice * omp_get_thread_num();
      for (int64_t i = 0; i < slice; ++i) mine[i] = static_cast<uint8_t>(i * 131 + omp_get_thread_num());
    }
  }
  ~SharedRead() { std::free(data); }
  SharedRead(const SharedRead&) = delete;
  SharedRead& operator=(const SharedRead&) = delete;

  double rate(int64_t passes, double& checksum) const {
    uint64_t sum = 0;
    const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(threads) reduction(+ : sum)
    sum += sum_bytes(data + slice * omp_get_thread_num(), slice, passes);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    checksum += static_cast<double>(sum % 1000003);
    return static_cast<double>(bytes) * passes / s;
  }
};

// The best of `trials` reads of a buffer of `bytes` by `threads` threads, each trial at least `seconds` long
// (passes found from an untimed first read, which also brings the buffer into the cache it fits). The best, not
// the median: the floor is a bound no call can beat, and on a shared machine a trial is only ever slowed down.
double read_rate(int64_t bytes, int threads, int trials, double seconds, double& checksum) {
  SharedRead buffer(bytes, threads);
  const auto t0 = std::chrono::steady_clock::now();
  buffer.rate(1, checksum);
  const double one = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const int64_t passes = std::max<int64_t>(1, static_cast<int64_t>(seconds / std::max(one, 1e-9)));
  double best = 0;
  for (int t = 0; t < trials; ++t) best = std::max(best, buffer.rate(passes, checksum));
  return best;
}

struct LevelRead {
  std::string level;  // l2 | l3 | memory
  int64_t bytes_one = 0, bytes_all = 0;  // the buffer read by one thread, by all threads
  double one = 0, all = 0;  // bytes/s
};

// L2: half of one core's L2 per thread (each thread's slice stays in its own core's L2); L3: half the L3, whatever
// the thread count; memory: twice the L3 and at least 64 MB, so that every pass misses the caches.
std::vector<LevelRead> read_bandwidths(const Caches& caches, int threads, int trials, double seconds,
                                       double& checksum) {
  std::vector<LevelRead> out;
  auto add = [&](const char* level, int64_t one_bytes, int64_t all_bytes) {
    LevelRead r{level, slice_bytes(one_bytes, 1), slice_bytes(all_bytes, threads) * threads, 0, 0};
    r.one = read_rate(one_bytes, 1, trials, seconds, checksum);
    r.all = read_rate(all_bytes, threads, trials, seconds, checksum);
    out.push_back(r);
  };
  if (caches.l2 > 0) add("l2", caches.l2 / 2, caches.l2 / 2 * threads);
  if (caches.l3 > 0) add("l3", caches.l3 / 2, caches.l3 / 2);
  const int64_t big = std::max<int64_t>(64LL << 20, 2 * caches.l3);
  add("memory", big, big);
  return out;
}

// One read of the ladder: a buffer of `bytes` read by one thread, and shared by all threads.
struct SizedRead {
  int64_t bytes = 0;
  double one = 0, all = 0;  // bytes/s
};

// The read bandwidth along a ladder of buffer sizes, from 256 KiB to the memory buffer's size in steps of sqrt(2):
// a model's weights are read at the rate of a buffer their size, which a level's one figure (half the cache) can
// miss by a factor of two or more where the cache, a VM's share of it, holds less than its nominal size.
std::vector<SizedRead> read_bandwidth_ladder(const Caches& caches, int threads, int trials, double seconds,
                                             double& checksum) {
  const int64_t big = std::max<int64_t>(64LL << 20, 2 * caches.l3);
  std::vector<SizedRead> out;
  for (int step = 0;; ++step) {
    // 2^18 times sqrt(2)^step, rounded to whole chunks per thread
    const int64_t wanted = static_cast<int64_t>((256LL << 10) * (step % 2 ? 1.4142135623730951 : 1.0)) << (step / 2);
    if (wanted > big) break;
    SizedRead r;
    r.bytes = slice_bytes(wanted, threads) * threads;
    r.one = read_rate(r.bytes, 1, trials, seconds, checksum);
    r.all = read_rate(r.bytes, threads, trials, seconds, checksum);
    out.push_back(r);
  }
  return out;
}

}  // namespace
}  // namespace cpu_peaks
