"""The fused CPU training step (``fast.fused_step``, ``fast.int8_forward``, ``fast.reuse_memory``).

The paper's MLP step on a CPU is bound by passes over memory, not by arithmetic: the plain step
updates the latent weights with one torch op per formula term, clips them in another pass, and
binarizes them into a freshly allocated tensor in the next forward. Here:

* one C++ pass per parameter tensor does the optimizer update (shift-based AdaMax or Adam, the same
  arithmetic as the eager optimizers), the clipping, and the binarization of the clipped weights
  into buffers that live as long as the layer (``weight_cache.BinaryWeightCache``); the next forward
  multiplies with those buffers, so each weight is binarized once per step;
* a layer whose input is exactly a small integer (+1/-1 activations, or activations after dropout
  with a power-of-two scale) can take its forward product in integers: int8 with int32
  accumulation (``torch._int_mm``, VNNI/AMX where the CPU has them), or, for inputs of exactly
  +1/-1, XNOR and popcount on packed signs (the engine's kernels, 32 times fewer bytes of weights).
  Every product and sum is an integer far below 2^24, so the result equals the float32 product
  bit for bit (``weight_cache``). Its backward pass stays in float32 (the gradients are real
  numbers); so do the first layer (real pixels) and every layer whose input is not known to be
  integral. Inputs of +1/-1 take XNOR; other small integers take int8 where that is faster than
  float32 on this CPU (``choose_integer_products``);
* shift-based BN over (N, C) and the binarized activations run as C++ passes (``use_fused_layers``)
  instead of a dozen torch ops each, most of them the float64 log2 and exp2 of AP2: BN forward is
  two elementwise passes around torch's own column sums (so the sums add in torch's order and every
  number equals the Python layer's), its backward two more; an activation is one pass producing the
  +1/-1 output and its STE mask from torch's uniform draws, and its backward one multiply;
* glibc is told to keep freed memory (``reuse_memory``): every step allocates and frees
  gradient and activation tensors of tens of MB, which glibc otherwise returns to the kernel and
  faults back in page by page.

A cache knows the version of the latent weight it was made from (``Tensor._version``), so a
resume, a ``load_state_dict`` or any other in-place change makes the next forward rebinarize.
"""
from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import nn

from ..core.binarize import binarize_ste
from ..core.layers import BinaryLayer, SignActivation
from ..core.norms import ShiftBatchNorm, ShiftBatchNormFunction
from ..kernels import native_ops
from ..optim.shift_adamax import ShiftAdaMax
from .weight_cache import BinaryWeightCache, attach_weight_cache

# a latent weight's id -> (its binary cache, or None; its clip value, or None)
LayerMap = dict[int, tuple[BinaryWeightCache | None, float | None]]


# ---------------------------------------------------------------------------- which inputs are integral

def integral_input_scale(model: nn.Sequential) -> dict[int, float]:
    """Binary linear layers whose input is exactly a small integer, by index in the model, with its bound.

    Known from the model's structure alone: a SignActivation gives +1/-1; a Dropout after it gives
    0 or +-1/(1-p), an integer when 1/(1-p) is a power of two up to 64 (p = 0.5: +-2). Flatten keeps
    values. Anything else (the first layer's pixels, pooling, BN) ends the chain.
    """
    found: dict[int, float] = {}
    bound: float | None = None
    for i, module in enumerate(model):
        if isinstance(module, SignActivation):
            bound = 1.0
        elif isinstance(module, nn.Dropout) and bound is not None:
            scale = 1.0 / (1.0 - module.p) if module.p < 1 else math.inf
            exponent = math.log2(scale) if math.isfinite(scale) else math.inf
            bound = bound * scale if exponent == round(exponent) and scale <= 64 else None
        elif isinstance(module, nn.Flatten):
            pass
        elif isinstance(module, nn.Linear) and isinstance(module, BinaryLayer) and bound is not None:
            found[i] = bound
            bound = None
        else:
            bound = None
    return found


def _time_ms(fn, repeats: int = 5) -> float:
    fn()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def choose_integer_products(model: nn.Sequential, batch_size: int) -> dict[int, str]:
    """The integral-input layers (see ``integral_input_scale``) that take their forward product in integers,
    each with its product (``weight_cache.INTEGER_PRODUCTS``).

    A layer whose input is exactly +1/-1 always takes "xnor": it reads 1 bit per weight instead of 32 and
    does 64 products per popcount, ahead of float32 on every CPU (packing the weight once per step
    included). One whose input is another small integer (dropout's 0, +-2) takes "int8" where that is
    faster than float32 on this CPU at the training batch size (it is with VNNI or AMX, not without).
    All give the same numbers, so the choice changes speed only.
    """
    chosen: dict[int, str] = {}
    for i, bound in integral_input_scale(model).items():
        if bound == 1.0:
            chosen[i] = "xnor"
            continue
        out_features, in_features = model[i].weight.shape
        x = torch.ones(batch_size, in_features)
        w = torch.ones(out_features, in_features)
        w8 = w.to(torch.int8)
        if _time_ms(lambda: torch._int_mm(x.to(torch.int8), w8.t()).to(torch.float32)) < _time_ms(lambda: x @ w.t()):
            chosen[i] = "int8"
    return chosen


# ---------------------------------------------------------------------------- fused layers


def _fusable(x: torch.Tensor, dims: int | None = None) -> bool:
    """The C++ layers take contiguous float32 CPU tensors (of ``dims`` dimensions, where given)."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and x.is_contiguous()
            and (dims is None or x.dim() == dims))


class _FusedShiftBatchNormFunction(torch.autograd.Function):
    """``ShiftBatchNormFunction`` (core/norms.py) on (N, C) float32 inputs, in C++: the same numbers."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps: float):
        out, mean, inv_std, centered_ap2, inv_std_ap2, weight_ap2, normalized_ap2 = \
            native_ops().shift_batch_norm_forward(x, weight, bias, eps)
        ctx.save_for_backward(centered_ap2, normalized_ap2, inv_std_ap2, weight_ap2)
        ctx.mark_non_differentiable(mean, inv_std)
        return out, mean, inv_std

    @staticmethod
    def backward(ctx, grad_out, _grad_mean, _grad_inv_std):
        grad_x, grad_weight, grad_bias = native_ops().shift_batch_norm_backward(grad_out.contiguous(),
                                                                                *ctx.saved_tensors)
        return grad_x, grad_weight, grad_bias, None


def fused_shift_batch_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float):
    """ShiftBatchNorm's training function: C++ for (N, C) float32 inputs, the Python one otherwise."""
    if _fusable(x, 2) and _fusable(weight, 1) and _fusable(bias, 1):
        return _FusedShiftBatchNormFunction.apply(x, weight, bias, eps)
    return ShiftBatchNormFunction.apply(x, weight, bias, eps)


class _FusedSignSTE(torch.autograd.Function):
    """``binarize_ste`` (core/binarize.py) in one C++ pass; the uniform draws are torch's, as in stochastic_sign."""

    @staticmethod
    def forward(ctx, x, stochastic: bool):
        u = torch.rand(x.shape, device=x.device, dtype=torch.float32) if stochastic else None
        out, pass_gradient = native_ops().sign_activation(x, u)
        ctx.save_for_backward(pass_gradient)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        (pass_gradient,) = ctx.saved_tensors
        return native_ops().masked_gradient(grad_out.contiguous(), pass_gradient), None


def fused_binarize_ste(x: torch.Tensor, stochastic: bool = False) -> torch.Tensor:
    """SignActivation's binarizer: C++ for float32 CPU inputs, the Python one otherwise."""
    if _fusable(x):
        return _FusedSignSTE.apply(x, stochastic)
    return binarize_ste(x, stochastic)


def use_fused_layers(model: nn.Module) -> None:
    """Run the model's shift-based BNs (training mode) and binarized activations with the C++ kernels."""
    for module in model.modules():
        if isinstance(module, ShiftBatchNorm):
            module.training_function = fused_shift_batch_norm
        elif isinstance(module, SignActivation):
            module.binarize = fused_binarize_ste


# ---------------------------------------------------------------------------- fused optimizers


class FusedShiftAdaMax(ShiftAdaMax):
    """Shift-based AdaMax as ``ShiftAdaMax`` computes it, with clipping and binarization in the same pass.

    ``layer_of`` maps a latent weight to (its cache, its clip value); those parameters are clipped
    and rebinarized here, and the training loop's clip_ leaves them alone. State and groups are
    ShiftAdaMax's, so a checkpoint of either loads in the other.
    """

    def __init__(self, params, lr: float, betas: tuple[float, float], eps: float, layer_of: LayerMap):
        super().__init__(params, lr=lr, betas=betas, eps=eps)
        self.layer_of = layer_of

    def update(self, p: torch.Tensor, state: dict[str, Any], group: dict[str, Any], step_size: float) -> None:
        cache, clip = self.layer_of.get(id(p), (None, group["clip"]))
        beta1, beta2 = group["betas"]
        native_ops().shift_adamax_(p, p.grad.contiguous(), state["exp_avg"], state["exp_inf"], beta1, beta2,
                                   group["eps"], step_size, clip or 0.0, *_buffers(cache))
        _mark_updated(p, cache)


def _buffers(cache: BinaryWeightCache | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    return (None, None) if cache is None else (cache.binary, cache.binary_i8)


def _mark_updated(p: torch.Tensor, cache: BinaryWeightCache | None) -> None:
    """The C++ op wrote p (and the cache) behind autograd's back: move the version counters on."""
    if cache is not None:
        cache.mark_current()
    else:
        torch.autograd.graph.increment_version(p)


class FusedAdam(torch.optim.Adam):
    """torch.optim.Adam's arithmetic (its foreach and single-tensor forms), clip and binarize in one pass.

    Only the options the recipes use (no weight decay, amsgrad, maximize); state and groups are
    Adam's own, so checkpoints load either way.
    """

    def __init__(self, params, layer_of: LayerMap, **defaults):
        super().__init__(params, **{**defaults, "foreach": False, "fused": False})
        for group in self.param_groups:
            if group["weight_decay"] or group["amsgrad"] or group["maximize"]:
                raise ValueError("the fused Adam step has no weight decay, amsgrad or maximize")
        self.layer_of = layer_of
        # Each parameter's step count as a Python number too, so that a step never reads a tensor
        # (the state keeps Adam's step tensor, for checkpoints).
        self.step_numbers: dict[int, float] = {}

    def load_state_dict(self, state_dict) -> None:
        super().load_state_dict(state_dict)
        self.step_numbers = {id(p): float(self.state[p]["step"]) for group in self.param_groups
                             for p in group["params"] if "step" in self.state[p]}

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        op = native_ops().adam_
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps = group["lr"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0, dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    self.step_numbers[id(p)] = 0.0
                state["step"] += 1
                step = self.step_numbers[id(p)] = self.step_numbers[id(p)] + 1
                bias_correction1 = 1 - beta1 ** step
                bias_correction2 = 1 - beta2 ** step
                cache, clip = self.layer_of.get(id(p), (None, None))
                op(p, p.grad.contiguous(), state["exp_avg"], state["exp_avg_sq"], beta1, beta2, eps,
                   lr / bias_correction1, bias_correction2 ** 0.5, clip or 0.0, *_buffers(cache))
                _mark_updated(p, cache)
        return loss


def fuse_optimizer(optimizer: torch.optim.Optimizer, layer_of: LayerMap
                   ) -> torch.optim.Optimizer:
    """The fused version of a plain ShiftAdaMax or Adam, with the same groups and hyper-parameters."""
    groups = [dict(g) for g in optimizer.param_groups]
    if type(optimizer) is ShiftAdaMax:
        d = optimizer.defaults
        return FusedShiftAdaMax(groups, lr=d["lr"], betas=d["betas"], eps=d["eps"], layer_of=layer_of)
    if type(optimizer) is torch.optim.Adam:
        d = optimizer.defaults
        for g in groups:
            g.pop("foreach", None)
            g.pop("fused", None)
        return FusedAdam(groups, layer_of=layer_of, lr=d["lr"], betas=d["betas"], eps=d["eps"])
    raise ValueError(f"fast.fused_step has no fused form of {type(optimizer).__name__}")


def setup_fused_step(model: nn.Sequential, optimizer: torch.optim.Optimizer, int8_forward: bool,
                     batch_size: int) -> tuple[torch.optim.Optimizer, set[int], dict[int, str]]:
    """Caches on the model's deterministic binary layers, the C++ BN and activations, and the fused optimizer.

    Returns (optimizer, ids of the latent weights it clips, the layers that multiply in integers: index ->
    "int8" or "xnor").
    """
    integer_products = choose_integer_products(model, batch_size) if int8_forward else {}
    layer_of: LayerMap = {}
    for i, module in enumerate(model):
        if isinstance(module, BinaryLayer):
            cache = None
            if not module.stochastic:
                cache = attach_weight_cache(module, integer_products.get(i))
            layer_of[id(module.weight)] = (cache, module.clip_value)
    use_fused_layers(model)
    return fuse_optimizer(optimizer, layer_of), set(layer_of), integer_products
