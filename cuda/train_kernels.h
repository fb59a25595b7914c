// CPU kernels of the fused training step (plain C++, no torch headers): one pass over a parameter
// tensor does the optimizer update, the clipping of latent weights, and the binarization of the
// clipped weights into the buffers the next forward pass multiplies with. The separate torch ops
// make one pass over memory each; for the paper's MLPs the step is bound by that memory traffic.
//
// Each function handles elements [0, n) of its arrays on the calling thread; cuda/ops.cpp splits
// a tensor into blocks on torch's thread pool. Arithmetic matches torch's eager ops element for
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

// Clip (if clip > 0) and binarize as above, for weights another optimizer has updated.
void clip_binarize(float* p, int64_t n, float clip, float* binary, int8_t* binary_i8);

}  // namespace bnn_train
