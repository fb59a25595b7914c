// What the glue's CPU ops share (inference_ops.cpp, plan_ops.cpp): the instruction set the CPU kernels use, and
// torch's thread pool as the kernels' Parallel.
#pragma once
#include <ATen/Parallel.h>

#include "../cpu/parallel.h"
#include "../cpu/xnor_kernels.h"

namespace bnn_glue {

// The best instruction set this CPU has, unless set_cpu_isa chose another (the tests run every supported one).
bnn_cpu::Isa current_isa();

// Chunks on torch's intra-op threads (at::parallel_for: one chunk per thread, the caller's among them).
class TorchParallel final : public bnn_cpu::Parallel {
 public:
  void run(int64_t tasks, int64_t grain, const std::function<void(int64_t, int64_t)>& body) const override {
    at::parallel_for(0, tasks, grain, [&](int64_t begin, int64_t end) { body(begin, end); });
  }
};

}  // namespace bnn_glue
