// CPU kernels of the fused training step (plain C++, no torch headers): one pass over a parameter
// tensor does the optimizer update, the clipping of latent weights, and the binarization of the
// clipped weights into the buffers the next forward pass multiplies with. The separate torch ops
// make one pass over memory each; for the paper's MLPs the step is bound by that memory traffic.
//
// Each function handles elements [0, n) of its arrays on the calling thread; cuda/glue/training_ops.cpp
// splits a tensor into blocks on torch's thread pool. Arithmetic matches torch's eager ops element for
// element (lerp_ and addcmul_ as fused multiply-adds, addcdiv_ as p + (value * a) / b), so the fused step
// gives the plain step's numbers.
#pragma once
#include <cstdint>

namespace bnn_train {

// AP2 of a non-negative float: 2^round(log2 x) with exact rounding (x >= 2^k * sqrt(2) rounds up),
// 0 for 0, for normal and subnormal x alike.
float ap2_nonnegative(float x);

// Shift-based AdaMax (see bnnctl's optim.shift_adamax), in place:
//   m = lerp(m, g, 1 - beta1);  v = AP2(max(beta2 * v, |g|)) + eps;  p = p + (-step * m) / v
// then, if clip > 0, p = clamp(p, -clip, clip); then, where given, binary[i] = p >= 0 ? +1 : -1
// (float) and binary_i8[i] likewise (int8).
void shift_adamax(float* p, const float* g, float* m, float* v, int64_t n, float one_minus_beta1, float beta2,
                  float eps, float step, float clip, float* binary, int8_t* binary_i8);

// Adam as torch.optim.Adam (fused=False, amsgrad=False, weight_decay=0) computes it, in place:
//   m = lerp(m, g, 1 - beta1);  v = beta2 * v + (1 - beta2) * g * g
//   p = p + (-step) * m / (sqrt(v) / bias2_sqrt + eps)
// with step = lr / (1 - beta1^t), bias2_sqrt = sqrt(1 - beta2^t); then clip and binarize as above.
void adam(float* p, const float* g, float* m, float* v, int64_t n, float one_minus_beta1, float beta2,
          float one_minus_beta2, float eps, float step, float bias2_sqrt, float clip, float* binary,
          int8_t* binary_i8);

// ---- shift-based BN and binarized activations, training mode (bnnctl's core/norms.py, core/binarize.py)
//
// The elementwise passes of shift-based BN over a row-major (rows, cols) block, one column per feature.
// The column sums between them are left to torch (cuda/glue/training_ops.cpp calls at::sum), so that they
// add in torch's order and the fused layer gives the Python layer's numbers bit for bit. Every product and
// difference is the one torch's eager ops round, in the same order.

// AP2 of any float: sign(x) * 2^round(log2|x|), with AP2(+-0) = +-0 and AP2(NaN) = NaN.
float ap2(float x);

// Forward, before the variance: centered_ap2 = AP2(x - mean) and variance_terms = centered_ap2 * (x - mean).
void shift_bn_center(const float* x, const float* mean, int64_t rows, int64_t cols, float* centered_ap2,
                     float* variance_terms);

// Forward, after it: normalized = (x - mean) * inv_std_ap2; out = normalized * weight_ap2 + bias (a product
// and a sum, each rounded, no fused multiply-add); normalized_ap2 = AP2(normalized).
void shift_bn_normalize(const float* x, const float* mean, const float* inv_std_ap2, const float* weight_ap2,
                        const float* bias, int64_t rows, int64_t cols, float* out, float* normalized_ap2);

// Backward, the terms of its column sums: projection_terms = centered_ap2 * g, weight_terms = normalized_ap2 * g.
void shift_bn_backward_terms(const float* g, const float* centered_ap2, const float* normalized_ap2, int64_t rows,
                             int64_t cols, float* projection_terms, float* weight_terms);

// Backward, the input gradient: grad_x = ((g - g_mean) - centered_ap2 * projection) * scale, per column
// g_mean, projection and scale (= inv_std_ap2 * weight_ap2).
void shift_bn_grad_input(const float* g, const float* centered_ap2, const float* g_mean, const float* projection,
                         const float* scale, int64_t rows, int64_t cols, float* grad_x);

// Binarized activation with its straight-through mask, in one pass: out = +1 where u < hard_sigmoid(x)
// (hard_sigmoid(x) = clamp((x + 1) / 2, 0, 1); a NaN x gives -1), else -1; with u null, the deterministic
// sign (+1 where x >= 0, -0.0 included). pass_gradient = |x| <= 1.
void sign_activation(const float* x, const float* u, int64_t n, float* out, uint8_t* pass_gradient);

// The STE's backward: grad_x = grad * (pass_gradient ? 1 : 0), as a float product (so -g * 0 = -0, NaN * 0 = NaN).
void masked_gradient(const float* grad, const uint8_t* pass_gradient, int64_t n, float* grad_x);

}  // namespace bnn_train
