// A whole exported BNN prepared once to run in one native call per batch: every layer's weights in the panel
// layout of the chosen instruction set's kernels, its folded thresholds, border corrections and output affine,
// and the buffers between layers. It computes what bnnctl/infer/engine.py's PackedEngine computes, to the bit:
// the same integer pre-activations, thresholds, packed activations and float64 logits (see there for the maths).
//
// Dense layers on 1 to kMaxFewRows rows run the few-row kernels (xnor_few_rows), the threshold and the packing
// of the next layer's bits done on the kernel's outputs; more rows go through the many-row GEMM (xnor_panels)
// into int32 and are then packed. A convolution runs per pooled output row: its im2col rows gathered into panels,
// the GEMM into a block of int32 that stays in cache, then border correction, max-pool, direction and threshold
// packed straight into the output (conv_threshold_rows).
//
// Plain C++17 with no torch headers: the torch glue (cuda/glue/inference_ops.cpp) and the C library
// (cuda/c/bnnctl.h) both run this code.
#pragma once
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "bnnx_reader.h"
#include "parallel.h"
#include "xnor_kernels.h"

namespace bnn_cpu {

// How the first layer runs: XNOR on the 8 bit planes of 8-bit images (models trained on 2x/255 - 1 inputs; exact
// integers, engine.py's "bitplane"), or the float baseline kernel on the model's own float inputs ("float").
enum class FirstLayer { bitplane, floats };
const char* first_layer_name(FirstLayer mode);
bool parse_first_layer(const std::string& name, FirstLayer* out);

// The plan cannot run this model the way it was asked to (one sentence).
class PlanError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class Plan {
 public:
  Plan(const bnnx::Model& model, FirstLayer first_layer, Isa isa);
  ~Plan();
  Plan(const Plan&) = delete;
  Plan& operator=(const Plan&) = delete;

  Isa isa() const;
  FirstLayer first_layer() const;
  int64_t input_size() const;   // values per image: uint8 for the bitplane first layer, float32 for the float one
  int64_t num_classes() const;
  // Per image, the shape of each binarizing layer's packed output, as run() traces it: (words) for a dense layer,
  // (height, width, channel words) for a convolution (channels-last), as engine.py's layers leave them.
  std::vector<std::vector<int64_t>> trace_shapes() const;

  // float64 logits (n, num_classes) of n inputs (input_size() values each, uint8 or float32 as first_layer()
  // says); `trace`, when given, receives each binarizing layer's packed output (n times its trace shape). Calls on
  // one plan take turns (its buffers are reused from call to call).
  void run(const void* inputs, int64_t n, double* logits, const Parallel& parallel,
           std::vector<std::vector<uint64_t>>* trace = nullptr);

  // Whether run_pixels takes uint8 pixels: always for the bitplane first layer, which reads them as they are; for
  // the float one where the export carries a per-pixel preprocessing (the float32 value of each byte).
  bool takes_pixels() const;
  // run() on n images of uint8 pixels, a float first layer's mapped through the export's per-pixel table first (the
  // values its preprocessing gives them, so the same logits); only where takes_pixels().
  void run_pixels(const uint8_t* pixels, int64_t n, double* logits, const Parallel& parallel,
                  std::vector<std::vector<uint64_t>>* trace = nullptr);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace bnn_cpu
