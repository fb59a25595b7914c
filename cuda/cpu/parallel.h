// How the CPU code's loops are spread over threads, without naming a thread pool: the torch glue runs them on
// torch's (at::parallel_for, cuda/glue/inference_ops.cpp), the C library on OpenMP (cuda/c/bnnctl.cpp). Plain C++.
#pragma once
#include <algorithm>
#include <cstdint>
#include <functional>

namespace bnn_cpu {

class Parallel {
 public:
  virtual ~Parallel() = default;
  // Runs body(begin, end) on contiguous chunks of the tasks [0, tasks) that cover each task once, the chunks at
  // the same time on different threads; a chunk holds at least `grain` tasks, but the last.
  virtual void run(int64_t tasks, int64_t grain, const std::function<void(int64_t, int64_t)>& body) const = 0;
};

// Every task on the calling thread.
class Serial final : public Parallel {
 public:
  void run(int64_t tasks, int64_t /*grain*/, const std::function<void(int64_t, int64_t)>& body) const override {
    if (tasks > 0) body(0, tasks);
  }
};

// Runs block(m0, m1, n0, n1) over an (m, n) output cut into tiles of tile_m x tile_n, in parallel.
template <typename Block>
void for_each_tile(const Parallel& parallel, int64_t m, int64_t n, int64_t tile_m, int64_t tile_n, const Block& block) {
  const int64_t tiles_m = (m + tile_m - 1) / tile_m, tiles_n = (n + tile_n - 1) / tile_n;
  parallel.run(tiles_m * tiles_n, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t m0 = (t % tiles_m) * tile_m, n0 = (t / tiles_m) * tile_n;
      block(m0, std::min(m, m0 + tile_m), n0, std::min(n, n0 + tile_n));
    }
  });
}

}  // namespace bnn_cpu
