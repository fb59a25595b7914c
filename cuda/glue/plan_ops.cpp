// The torch glue of the native plan (cpu/xnor_plan.h): a whole exported network in one call per batch, on torch's
// threads, and the few-row XNOR kernel on its own for the tests. Plans live in a registry under integer handles
// (plan_create .. plan_release), built from a .bnnx file's bytes by the same reader the C library uses, so torch and
// C run one implementation, checks included.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <climits>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "../cpu/bnnx_reader.h"
#include "../cpu/xnor_plan.h"
#include "op_checks.h"
#include "torch_cpu.h"

namespace {

std::mutex g_plans_mutex;
std::unordered_map<int64_t, std::shared_ptr<bnn_cpu::Plan>> g_plans;
int64_t g_next_plan = 1;

// Why plan_create refused, as its status: which Python error the caller raises.
enum PlanStatus : int64_t { kCreated = 0, kNotExport = 1, kVersion = 2, kDamaged = 3, kCannotRun = 4 };

std::shared_ptr<bnn_cpu::Plan> plan_of(int64_t handle) {
  std::lock_guard<std::mutex> lock(g_plans_mutex);
  const auto it = g_plans.find(handle);
  TORCH_CHECK(it != g_plans.end(), "bnnctl: no native plan ", handle, " (released, or never created)");
  return it->second;
}

// (handle, status, message): a plan of the export in `data` (uint8 bytes of a .bnnx file, `name` naming it in
// messages) for the current instruction set; handle 0 and the reason when the file or the model is refused.
// first_layer: bitplane, float, or auto (bitplane for models of 8-bit images, else float).
std::tuple<int64_t, int64_t, std::string> plan_create(const at::Tensor& data, const std::string& name,
                                                      const std::string& first_layer) {
  TORCH_CHECK(data.dim() == 1 && data.scalar_type() == at::kByte && data.is_contiguous() && data.device().is_cpu(),
              "bnnctl::plan_create expects the export's bytes as a contiguous 1-D uint8 CPU tensor");
  bnn_cpu::FirstLayer mode = bnn_cpu::FirstLayer::floats;
  TORCH_CHECK(first_layer == "auto" || bnn_cpu::parse_first_layer(first_layer, &mode),
              "bnnctl::plan_create: unknown first layer '", first_layer, "' (expected auto, bitplane or float)");
  std::shared_ptr<bnn_cpu::Plan> plan;
  try {
    const bnnx::Model model = bnnx::read_export(data.data_ptr<uint8_t>(), (size_t)data.numel(), name);
    if (first_layer == "auto") mode = model.eight_bit() ? bnn_cpu::FirstLayer::bitplane : bnn_cpu::FirstLayer::floats;
    plan = std::make_shared<bnn_cpu::Plan>(model, mode, bnn_glue::current_isa());
  } catch (const bnnx::ExportError& e) {
    const PlanStatus status = e.refusal == bnnx::Refusal::damaged ? kDamaged
                              : e.refusal == bnnx::Refusal::version ? kVersion : kNotExport;
    return {0, status, e.what()};
  } catch (const bnn_cpu::PlanError& e) {
    return {0, kCannotRun, e.what()};
  }
  std::lock_guard<std::mutex> lock(g_plans_mutex);
  const int64_t handle = g_next_plan++;
  g_plans.emplace(handle, std::move(plan));
  return {handle, kCreated, ""};
}

void plan_release(int64_t handle) {
  std::lock_guard<std::mutex> lock(g_plans_mutex);
  g_plans.erase(handle);
}

// (instruction set, first layer, values per input, classes) of a plan.
std::tuple<std::string, std::string, int64_t, int64_t> plan_info(int64_t handle) {
  const auto plan = plan_of(handle);
  return {bnn_cpu::isa_name(plan->isa()), bnn_cpu::first_layer_name(plan->first_layer()), plan->input_size(),
          plan->num_classes()};
}

// The logits of a batch x (n, ...), and with trace each binarizing layer's packed output before them. x: uint8 for
// the bitplane first layer; float32 for the float one, or uint8 pixels where the export carries a per-pixel
// preprocessing (plan_takes_pixels).
std::vector<at::Tensor> run_plan(int64_t handle, const at::Tensor& x, bool trace) {
  const auto plan = plan_of(handle);
  const bool eight_bit = plan->first_layer() == bnn_cpu::FirstLayer::bitplane;
  const bool pixels = x.scalar_type() == at::kByte && plan->takes_pixels();
  TORCH_CHECK(x.dim() >= 1 && x.device().is_cpu() && x.is_contiguous() &&
                  (pixels || (!eight_bit && x.scalar_type() == at::kFloat)),
              "bnnctl::plan_logits expects a contiguous CPU tensor of ", eight_bit ? "uint8" : "float32",
              " inputs (n, ...)", !eight_bit && plan->takes_pixels() ? " or uint8 pixels" : "");
  const int64_t n = x.size(0);
  TORCH_CHECK(x.numel() == n * plan->input_size(), "bnnctl::plan_logits: the model takes ", plan->input_size(),
              " values per input, got ", n ? x.numel() / n : 0);
  at::Tensor logits = at::empty({n, plan->num_classes()}, x.options().dtype(at::kDouble));
  std::vector<std::vector<uint64_t>> layers;
  if (pixels)
    plan->run_pixels(x.data_ptr<uint8_t>(), n, logits.data_ptr<double>(), bnn_glue::TorchParallel(),
                     trace ? &layers : nullptr);
  else
    plan->run(x.data_ptr(), n, logits.data_ptr<double>(), bnn_glue::TorchParallel(), trace ? &layers : nullptr);
  std::vector<at::Tensor> out;
  if (trace) {
    const auto shapes = plan->trace_shapes();
    for (size_t i = 0; i < layers.size(); ++i) {
      std::vector<int64_t> shape = {n};
      shape.insert(shape.end(), shapes[i].begin(), shapes[i].end());
      at::Tensor t = at::empty(shape, x.options().dtype(at::kLong));
      std::copy(layers[i].begin(), layers[i].end(), reinterpret_cast<uint64_t*>(t.data_ptr<int64_t>()));
      out.push_back(t);
    }
  }
  out.push_back(logits);
  return out;
}

at::Tensor plan_logits(int64_t handle, const at::Tensor& x) { return run_plan(handle, x, false)[0]; }

// Whether a float first layer's plan takes uint8 pixels (its export carries a per-pixel preprocessing).
bool plan_takes_pixels(int64_t handle) {
  const auto plan = plan_of(handle);
  return plan->first_layer() == bnn_cpu::FirstLayer::floats && plan->takes_pixels();
}

std::vector<at::Tensor> plan_trace(int64_t handle, const at::Tensor& x) { return run_plan(handle, x, true); }

// The few-row kernel on its own (the tests' entry): a (rows <= 8, words) packed, b (n, words) packed, both with
// zero bits past k; int32 (rows, n) products, or with bound (n int32) the packed bits of product >= bound, or with
// planes the one row sum_r 2^r product_r. Columns go to the kernel words_per_call * 64 at a time.
at::Tensor xnor_few_rows(const at::Tensor& a, const at::Tensor& b, int64_t k, const std::optional<at::Tensor>& bound,
                         bool planes, int64_t words_per_call) {
  bnn_ops::check_packed_pair(a, b, k);
  TORCH_CHECK(a.device().is_cpu() && a.size(0) >= 1 && a.size(0) <= bnn_cpu::kMaxFewRows,
              "bnnctl::xnor_few_rows takes 1 to ", bnn_cpu::kMaxFewRows, " rows of a on the CPU");
  TORCH_CHECK(words_per_call >= 1, "bnnctl::xnor_few_rows: words_per_call must be positive");
  const bnn_cpu::Isa isa = bnn_glue::current_isa();
  const int64_t rows = a.size(0), n = b.size(0), words = b.size(1), out_words = bnn_ops::words_for(n);
  const int64_t nr = bnn_cpu::panel_shape(isa).cols, panels = (n + nr - 1) / nr;
  std::vector<uint64_t> b_panels((size_t)(std::max<int64_t>(panels, 1) * words * nr));
  bnn_cpu::pack_b_panels(isa, reinterpret_cast<const uint64_t*>(b.data_ptr<int64_t>()), n, words, k, 0, panels,
                         b_panels.data());
  std::vector<int32_t> padded;  // the kernels read whole vectors of bounds: padded to a multiple of 64
  if (bound) {
    TORCH_CHECK(bound->dim() == 1 && bound->size(0) == n && bound->scalar_type() == at::kInt && bound->is_contiguous(),
                "bnnctl::xnor_few_rows: bound must be ", n, " contiguous int32 values");
    padded.assign((size_t)(out_words * 64), INT32_MAX);
    std::copy(bound->data_ptr<int32_t>(), bound->data_ptr<int32_t>() + n, padded.begin());
  }
  const int64_t out_rows = planes ? 1 : rows;
  at::Tensor out = bound ? at::empty({out_rows, out_words}, a.options())
                         : at::empty({out_rows, n}, a.options().dtype(at::kInt));
  const bnn_cpu::FewRowsOutput o{bound ? nullptr : out.data_ptr<int32_t>(),
                                 bound ? reinterpret_cast<uint64_t*>(out.data_ptr<int64_t>()) : nullptr,
                                 bound ? padded.data() : nullptr, bound ? out_words : n, planes};
  for (int64_t w = 0; w < out_words; w += words_per_call)
    bnn_cpu::xnor_few_rows(isa, reinterpret_cast<const uint64_t*>(a.data_ptr<int64_t>()), (int)rows, words, k,
                           b_panels.data(), 64 * w, std::min(n, 64 * (w + words_per_call)), o);
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(bnnctl, m) {
  m.def("plan_create(Tensor data, str name, str first_layer) -> (int, int, str)", &plan_create);
  m.def("plan_release(int plan) -> ()", &plan_release);
  m.def("plan_info(int plan) -> (str, str, int, int)", &plan_info);
  m.def("plan_logits(int plan, Tensor x) -> Tensor", &plan_logits);
  m.def("plan_trace(int plan, Tensor x) -> Tensor[]", &plan_trace);
  m.def("plan_takes_pixels(int plan) -> bool", &plan_takes_pixels);
  m.def("xnor_few_rows(Tensor a, Tensor b, int k, Tensor? bound, bool planes, int words_per_call) -> Tensor",
        &xnor_few_rows);
}
