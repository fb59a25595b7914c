// The torch glue of the training ops: registers the fused training step's ops (optimizer updates with
// clipping and binarization, shift-based BN, binarized activations) in the `bnnctl` op library and
// implements them for CPU tensors on torch's thread pool, around the kernels of train/train_kernels.h.
// The inference ops' glue is inference_ops.cpp.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/mean.h>
#include <ATen/ops/sum.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <tuple>

#include "../train/train_kernels.h"

namespace {

// ---- the fused training step (train/train_kernels.h) ------------------------------------------------

void check_step_tensor(const at::Tensor& t, const at::Tensor& param, const char* what) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous(), "bnnctl fused step: ", what,
              " must be a contiguous float32 CPU tensor");
  TORCH_CHECK(t.numel() == param.numel(), "bnnctl fused step: ", what, " has ", t.numel(), " elements, the parameter ",
              param.numel());
}

float* binary_ptr(const std::optional<at::Tensor>& binary, const at::Tensor& param) {
  if (!binary) return nullptr;
  check_step_tensor(*binary, param, "binary");
  return binary->data_ptr<float>();
}

int8_t* binary_i8_ptr(const std::optional<at::Tensor>& binary, const at::Tensor& param) {
  if (!binary) return nullptr;
  TORCH_CHECK(binary->device().is_cpu() && binary->scalar_type() == at::kChar && binary->is_contiguous() &&
                  binary->numel() == param.numel(),
              "bnnctl fused step: binary_i8 must be a contiguous int8 CPU tensor shaped like the parameter");
  return binary->data_ptr<int8_t>();
}

// Blocks small enough that the binarization loops re-read the updated weights from the L2 cache.
template <typename Block>
void for_each_chunk(int64_t n, const Block& block) {
  at::parallel_for(0, n, 16384, [&](int64_t i0, int64_t i1) { block(i0, i1 - i0); });
}

void shift_adamax_cpu(at::Tensor& param, const at::Tensor& grad, at::Tensor& exp_avg, at::Tensor& exp_inf, double beta1,
                      double beta2, double eps, double step, double clip, const std::optional<at::Tensor>& binary,
                      const std::optional<at::Tensor>& binary_i8) {
  check_step_tensor(param, param, "param");
  check_step_tensor(grad, param, "grad");
  check_step_tensor(exp_avg, param, "exp_avg");
  check_step_tensor(exp_inf, param, "exp_inf");
  float *p = param.data_ptr<float>(), *m = exp_avg.data_ptr<float>(), *v = exp_inf.data_ptr<float>();
  const float* g = grad.data_ptr<float>();
  float* b = binary_ptr(binary, param);
  int8_t* b8 = binary_i8_ptr(binary_i8, param);
  for_each_chunk(param.numel(), [&](int64_t i, int64_t n) {
    bnn_train::shift_adamax(p + i, g + i, m + i, v + i, n, (float)(1.0 - beta1), (float)beta2, (float)eps, (float)step,
                            (float)clip, b ? b + i : nullptr, b8 ? b8 + i : nullptr);
  });
}

void adam_cpu(at::Tensor& param, const at::Tensor& grad, at::Tensor& exp_avg, at::Tensor& exp_avg_sq, double beta1,
              double beta2, double eps, double step, double bias2_sqrt, double clip,
              const std::optional<at::Tensor>& binary, const std::optional<at::Tensor>& binary_i8) {
  check_step_tensor(param, param, "param");
  check_step_tensor(grad, param, "grad");
  check_step_tensor(exp_avg, param, "exp_avg");
  check_step_tensor(exp_avg_sq, param, "exp_avg_sq");
  float *p = param.data_ptr<float>(), *m = exp_avg.data_ptr<float>(), *v = exp_avg_sq.data_ptr<float>();
  const float* g = grad.data_ptr<float>();
  float* b = binary_ptr(binary, param);
  int8_t* b8 = binary_i8_ptr(binary_i8, param);
  for_each_chunk(param.numel(), [&](int64_t i, int64_t n) {
    bnn_train::adam(p + i, g + i, m + i, v + i, n, (float)(1.0 - beta1), (float)beta2, (float)(1.0 - beta2), (float)eps,
                    (float)step, (float)bias2_sqrt, (float)clip, b ? b + i : nullptr, b8 ? b8 + i : nullptr);
  });
}

at::Tensor ap2_cpu(const at::Tensor& x) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat, "bnnctl::ap2_nonnegative expects float32 on the CPU");
  at::Tensor src = x.contiguous();
  at::Tensor out = at::empty(src.sizes(), src.options());
  const float* s = src.data_ptr<float>();
  float* d = out.data_ptr<float>();
  for_each_chunk(src.numel(), [&](int64_t i, int64_t n) {
    for (int64_t j = 0; j < n; ++j) d[i + j] = bnn_train::ap2_nonnegative(s[i + j]);
  });
  return out;
}

// ---- shift-based BN and binarized activations, training mode (train/train_kernels.h) -------------------
// The elementwise passes run here in C++; the column sums are torch's own at::mean / at::sum over the
// same terms the Python layer sums (core/norms.py), so that they add in the same order and round alike.

void check_float_cpu(const at::Tensor& t, int64_t dims, const char* what) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous() && t.dim() == dims,
              "bnnctl shift BN / sign activation: ", what, " must be a contiguous ", dims, "-D float32 CPU tensor");
}

void check_per_feature(const at::Tensor& t, int64_t features, const char* what) {
  check_float_cpu(t, 1, what);
  TORCH_CHECK(t.size(0) == features, "bnnctl shift BN: ", what, " has ", t.size(0), " entries for ", features,
              " features");
}

// Runs block(r0, r1) over row blocks of about 16 K elements on torch's thread pool.
template <typename Block>
void for_each_row_block(int64_t rows, int64_t cols, const Block& block) {
  at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / std::max<int64_t>(cols, 1)), block);
}

// Sums and means over the batch (dim 0), by torch's reduction kernels.
at::Tensor column_mean(const at::Tensor& t) { return at::mean(t, at::IntArrayRef{0}); }
at::Tensor column_sum(const at::Tensor& t) { return at::sum(t, at::IntArrayRef{0}); }

at::Tensor ap2_of(const at::Tensor& v) {
  at::Tensor out = at::empty_like(v);
  const float* s = v.data_ptr<float>();
  float* d = out.data_ptr<float>();
  for (int64_t i = 0; i < v.numel(); ++i) d[i] = bnn_train::ap2(s[i]);
  return out;
}

// (out, mean, inv_std, centered_ap2, inv_std_ap2, weight_ap2, normalized_ap2): the layer's output, the batch
// statistics for the running averages, and what the backward pass needs.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
shift_batch_norm_forward_cpu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, double eps) {
  check_float_cpu(x, 2, "x");
  const int64_t rows = x.size(0), cols = x.size(1);
  check_per_feature(weight, cols, "weight");
  check_per_feature(bias, cols, "bias");
  const at::Tensor mean = column_mean(x);
  at::Tensor centered_ap2 = at::empty_like(x), variance_terms = at::empty_like(x);
  const float* px = x.data_ptr<float>();
  const float* pmean = mean.data_ptr<float>();
  for_each_row_block(rows, cols, [&](int64_t r0, int64_t r1) {
    bnn_train::shift_bn_center(px + r0 * cols, pmean, r1 - r0, cols, centered_ap2.data_ptr<float>() + r0 * cols,
                               variance_terms.data_ptr<float>() + r0 * cols);
  });
  const at::Tensor var = column_mean(variance_terms);
  // (var + eps).rsqrt() as torch computes it for float32: eps rounded to float32, then 1 / sqrt
  at::Tensor inv_std = at::empty_like(var);
  const float eps_f = (float)eps;
  for (int64_t c = 0; c < cols; ++c) inv_std.data_ptr<float>()[c] = 1.0f / std::sqrt(var.data_ptr<float>()[c] + eps_f);
  const at::Tensor inv_std_ap2 = ap2_of(inv_std), weight_ap2 = ap2_of(weight);
  at::Tensor out = at::empty_like(x), normalized_ap2 = at::empty_like(x);
  for_each_row_block(rows, cols, [&](int64_t r0, int64_t r1) {
    bnn_train::shift_bn_normalize(px + r0 * cols, pmean, inv_std_ap2.data_ptr<float>(), weight_ap2.data_ptr<float>(),
                                  bias.data_ptr<float>(), r1 - r0, cols, out.data_ptr<float>() + r0 * cols,
                                  normalized_ap2.data_ptr<float>() + r0 * cols);
  });
  return {out, mean, inv_std, centered_ap2, inv_std_ap2, weight_ap2, normalized_ap2};
}

// (grad_x, grad_weight, grad_bias) of shift-based BN (the Torch7 gradient, core/norms.py).
std::tuple<at::Tensor, at::Tensor, at::Tensor> shift_batch_norm_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& centered_ap2, const at::Tensor& normalized_ap2,
    const at::Tensor& inv_std_ap2, const at::Tensor& weight_ap2) {
  check_float_cpu(grad_out, 2, "grad_out");
  const int64_t rows = grad_out.size(0), cols = grad_out.size(1);
  check_float_cpu(centered_ap2, 2, "centered_ap2");
  check_float_cpu(normalized_ap2, 2, "normalized_ap2");
  TORCH_CHECK(centered_ap2.sizes() == grad_out.sizes() && normalized_ap2.sizes() == grad_out.sizes(),
              "bnnctl shift BN backward: the saved tensors are not shaped like the gradient");
  check_per_feature(inv_std_ap2, cols, "inv_std_ap2");
  check_per_feature(weight_ap2, cols, "weight_ap2");
  const float* g = grad_out.data_ptr<float>();
  const float* pc = centered_ap2.data_ptr<float>();
  at::Tensor projection_terms = at::empty_like(grad_out), weight_terms = at::empty_like(grad_out);
  for_each_row_block(rows, cols, [&](int64_t r0, int64_t r1) {
    bnn_train::shift_bn_backward_terms(g + r0 * cols, pc + r0 * cols, normalized_ap2.data_ptr<float>() + r0 * cols,
                                       r1 - r0, cols, projection_terms.data_ptr<float>() + r0 * cols,
                                       weight_terms.data_ptr<float>() + r0 * cols);
  });
  at::Tensor projection = column_mean(projection_terms);
  const at::Tensor g_mean = column_mean(grad_out);
  at::Tensor grad_weight = column_sum(weight_terms), grad_bias = column_sum(grad_out);
  // projection = mean(centered_ap2 * g) * s * s and scale = s * weight_ap2, in the Python layer's order
  at::Tensor scale = at::empty_like(projection);
  const float* s = inv_std_ap2.data_ptr<float>();
  for (int64_t c = 0; c < cols; ++c) {
    projection.data_ptr<float>()[c] = projection.data_ptr<float>()[c] * s[c] * s[c];
    scale.data_ptr<float>()[c] = s[c] * weight_ap2.data_ptr<float>()[c];
  }
  at::Tensor grad_x = at::empty_like(grad_out);
  for_each_row_block(rows, cols, [&](int64_t r0, int64_t r1) {
    bnn_train::shift_bn_grad_input(g + r0 * cols, pc + r0 * cols, g_mean.data_ptr<float>(),
                                   projection.data_ptr<float>(), scale.data_ptr<float>(), r1 - r0, cols,
                                   grad_x.data_ptr<float>() + r0 * cols);
  });
  return {grad_x, grad_weight, grad_bias};
}

// (out, pass_gradient): +1/-1 (stochastic where the uniform draws u are given) and the STE mask |x| <= 1 as uint8.
std::tuple<at::Tensor, at::Tensor> sign_activation_cpu(const at::Tensor& x, const std::optional<at::Tensor>& u) {
  check_float_cpu(x, x.dim(), "x");
  if (u) {
    check_float_cpu(*u, x.dim(), "u");
    TORCH_CHECK(u->sizes() == x.sizes(), "bnnctl sign activation: u must be shaped like x");
  }
  at::Tensor out = at::empty_like(x);
  at::Tensor pass_gradient = at::empty(x.sizes(), x.options().dtype(at::kByte));
  const float* pu = u ? u->data_ptr<float>() : nullptr;
  for_each_chunk(x.numel(), [&](int64_t i, int64_t n) {
    bnn_train::sign_activation(x.data_ptr<float>() + i, pu ? pu + i : nullptr, n, out.data_ptr<float>() + i,
                               pass_gradient.data_ptr<uint8_t>() + i);
  });
  return {out, pass_gradient};
}

at::Tensor masked_gradient_cpu(const at::Tensor& grad, const at::Tensor& pass_gradient) {
  check_float_cpu(grad, grad.dim(), "grad");
  TORCH_CHECK(pass_gradient.device().is_cpu() && pass_gradient.scalar_type() == at::kByte &&
                  pass_gradient.is_contiguous() && pass_gradient.sizes() == grad.sizes(),
              "bnnctl sign activation backward: the mask must be a contiguous uint8 CPU tensor shaped like the gradient");
  at::Tensor grad_x = at::empty_like(grad);
  for_each_chunk(grad.numel(), [&](int64_t i, int64_t n) {
    bnn_train::masked_gradient(grad.data_ptr<float>() + i, pass_gradient.data_ptr<uint8_t>() + i, n,
                               grad_x.data_ptr<float>() + i);
  });
  return grad_x;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(bnnctl, m) {
  m.def("shift_adamax_(Tensor(a!) param, Tensor grad, Tensor(b!) exp_avg, Tensor(c!) exp_inf, float beta1, "
        "float beta2, float eps, float step, float clip, Tensor(d!)? binary, Tensor(e!)? binary_i8) -> ()");
  m.def("adam_(Tensor(a!) param, Tensor grad, Tensor(b!) exp_avg, Tensor(c!) exp_avg_sq, float beta1, float beta2, "
        "float eps, float step, float bias2_sqrt, float clip, Tensor(d!)? binary, Tensor(e!)? binary_i8) -> ()");
  m.def("ap2_nonnegative(Tensor x) -> Tensor");
  m.def("shift_batch_norm_forward(Tensor x, Tensor weight, Tensor bias, float eps) -> (Tensor, Tensor, Tensor, Tensor, "
        "Tensor, Tensor, Tensor)");
  m.def("shift_batch_norm_backward(Tensor grad_out, Tensor centered_ap2, Tensor normalized_ap2, Tensor inv_std_ap2, "
        "Tensor weight_ap2) -> (Tensor, Tensor, Tensor)");
  m.def("sign_activation(Tensor x, Tensor? u) -> (Tensor, Tensor)");
  m.def("masked_gradient(Tensor grad, Tensor pass_gradient) -> Tensor");
}

TORCH_LIBRARY_IMPL(bnnctl, CPU, m) {
  m.impl("shift_adamax_", &shift_adamax_cpu);
  m.impl("adam_", &adam_cpu);
  m.impl("ap2_nonnegative", &ap2_cpu);
  m.impl("shift_batch_norm_forward", &shift_batch_norm_forward_cpu);
  m.impl("shift_batch_norm_backward", &shift_batch_norm_backward_cpu);
  m.impl("sign_activation", &sign_activation_cpu);
  m.impl("masked_gradient", &masked_gradient_cpu);
}
