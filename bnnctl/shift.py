"""Shift-based BatchNorm and shift-based AdaMax (Algorithms 3 and 4 of the paper).

Both replace multiplications by AP2(x) = sign(x) * 2^round(log2|x|), so that on hardware they
become bit shifts. They follow the authors' Torch7 code (itayhubara/BinaryNet):
``SpatialBatchNormalizationShiftPow2.lua`` / ``BatchNormalizationShiftPow2.lua`` and
``adaMax_binary_clip_shift.lua``, including the places where the code differs from the paper's
pseudo-code (noted below).

Shift-based BN, training mode, per feature (over the batch, and the pixels of a feature map):
    mu = mean(x);  c = x - mu
    var = mean(c * AP2(c))                    # the square c^2 becomes a shift
    s = AP2(1 / sqrt(var + eps))
    y = AP2(gamma) * (c * s) + beta
Its gradient is the Torch7 one: with g the output gradient,
    dx     = AP2(gamma) * s * (g - mean(g) - AP2(c) * s^2 * mean(AP2(c) * g))
    dgamma = sum(AP2(c * s) * g),   dbeta = sum(g)
(exact BN would use c and s without AP2). The running averages track mu and 1/sqrt(var + eps)
(not AP2'd); evaluation uses y = AP2(gamma) * (x - running_mean) * AP2(running_inv_std) + beta.

Shift-based AdaMax, per step t (all tensors elementwise):
    m = b1 * m + (1 - b1) * g
    v = AP2(max(b2 * v, |g|)) + eps           # Torch7 keeps the AP2'd v (with eps) as its state
    step = AP2(lr / (1 - b1^t))               # the bias-corrected step size is a power of two
    theta = theta - step * lr_scale * m / v
where lr_scale is the layer's Glorot scale (rounded to a power of two in the Torch7 CIFAR-10
and SVHN models: ``optimizer.lr_scale_pow2``).
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .binarize import ap2
from .models import NORMS
from .optim import OPTIMIZERS
from .recipe import register_choice

# Parameters of a normalization layer carry this attribute so that an optimizer can give them a
# learning rate of their own (the Torch7 MNIST model does); the value says which parameter it is.
PARAM_ROLE = "bnn_role"
NORM_WEIGHT, NORM_BIAS = "norm_weight", "norm_bias"


def pow2_round(x: float) -> float:
    """AP2 of a positive Python number: 2^round(log2 x)."""
    return 2.0 ** round(math.log2(x))


def _tag_norm_parameters(module: nn.Module) -> None:
    setattr(module.weight, PARAM_ROLE, NORM_WEIGHT)
    setattr(module.bias, PARAM_ROLE, NORM_BIAS)


# ---------------------------------------------------------------------------- shift-based BN

def _reduce_dims(x: torch.Tensor) -> tuple[int, ...]:
    return (0,) if x.dim() == 2 else (0, *range(2, x.dim()))


def _per_feature(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(C,) -> shape that broadcasts over x's feature dimension 1."""
    return v.to(x.dtype).view(1, -1, *([1] * (x.dim() - 2)))


def _statistics_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


class _ShiftBatchNormFunction(torch.autograd.Function):
    """Training-mode shift-based BN with the Torch7 gradient; also returns the batch statistics."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps: float):
        in_dtype = x.dtype
        x = x.to(_statistics_dtype(x))  # float32 statistics even for bf16 inputs, like torch's own BN
        dims = _reduce_dims(x)
        mean = x.mean(dims)
        centered = x - _per_feature(mean, x)
        centered_ap2 = ap2(centered)
        var = (centered_ap2 * centered).mean(dims)
        inv_std = (var + eps).rsqrt()
        inv_std_ap2 = ap2(inv_std)
        normalized = centered * _per_feature(inv_std_ap2, x)
        weight_ap2 = ap2(weight.to(x.dtype))
        out = normalized * _per_feature(weight_ap2, x) + _per_feature(bias.to(x.dtype), x)
        ctx.save_for_backward(centered_ap2, inv_std_ap2, weight_ap2, ap2(normalized))
        ctx.in_dtype, ctx.param_dtype = in_dtype, weight.dtype
        ctx.mark_non_differentiable(mean, inv_std)
        return out, mean, inv_std

    @staticmethod
    def backward(ctx, grad_out, _grad_mean, _grad_inv_std):
        centered_ap2, inv_std_ap2, weight_ap2, normalized_ap2 = ctx.saved_tensors
        g = grad_out.to(centered_ap2.dtype)
        dims = _reduce_dims(g)
        s = inv_std_ap2
        projection = (centered_ap2 * g).mean(dims) * s * s
        grad_x = (g - _per_feature(g.mean(dims), g) - centered_ap2 * _per_feature(projection, g)) \
            * _per_feature(s * weight_ap2, g)
        grad_weight = (normalized_ap2 * g).sum(dims)
        grad_bias = g.sum(dims)
        return grad_x.to(ctx.in_dtype), grad_weight.to(ctx.param_dtype), grad_bias.to(ctx.param_dtype), None


class ShiftBatchNorm(nn.Module):
    """Shift-based BN over (N, C) or (N, C, H, W) inputs; see the module docstring."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.125):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        _tag_norm_parameters(self)
        self.register_buffer("running_mean", torch.zeros(num_features))
        # Torch7 starts the 1-D layer's running 1/std at 1 (the spatial one at 0, which the
        # first 0.125-momentum updates wash out); we start both at 1.
        self.register_buffer("running_inv_std", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() not in (2, 4):
            raise ValueError(f"ShiftBatchNorm expects (N, C) or (N, C, H, W) inputs, got shape {tuple(x.shape)}")
        if self.training:
            out, mean, inv_std = _ShiftBatchNormFunction.apply(x, self.weight, self.bias, self.eps)
            with torch.no_grad():
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), self.momentum)
                self.running_inv_std.lerp_(inv_std.to(self.running_inv_std.dtype), self.momentum)
            return out
        x = x.to(_statistics_dtype(x))
        scale = ap2(self.running_inv_std) * ap2(self.weight)
        return (x - _per_feature(self.running_mean, x)) * _per_feature(scale, x) + _per_feature(self.bias, x)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


def shift_batch_norm(dims: int, features: int, eps: float, momentum: float) -> nn.Module:
    return ShiftBatchNorm(features, eps=eps, momentum=momentum)


def torch7_batch_norm(dims: int, features: int, eps: float, momentum: float) -> nn.Module:
    """Exact BN, as Torch7's nn.BatchNormalization after the Torch7 models' output layer.

    The same module as the 'bn' norm, but its parameters are tagged so that ``shift_adamax``
    with ``optimizer.norm_lr_scale`` can scale the learning rate of gamma as the Torch7 MNIST
    model does.
    """
    module = (nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d)(features, eps=eps, momentum=momentum)
    _tag_norm_parameters(module)
    return module


# ---------------------------------------------------------------------------- shift-based AdaMax

class ShiftAdaMax(torch.optim.Optimizer):
    """Shift-based AdaMax (see the module docstring).

    Each parameter group carries ``lr`` (the schedule's LR times ``lr_scale``, as ``optim.set_lr``
    sets it), ``lr_scale`` and ``clip`` (clamp the group's parameters to [-clip, clip] after the
    step, as the Torch7 optimizer does for the entries of its clip vector; None: no clipping).
    The power-of-two rounding applies to the schedule's LR over the bias correction, before the
    layer's scale, as in the Torch7 code.
    """

    def __init__(self, params, lr: float = 2.0 ** -6, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 2.0 ** -27):
        if lr <= 0:
            raise ValueError(f"learning rate must be positive, got {lr}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, lr_scale=1.0, clip=None))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1 = group["betas"][0]
            base_lr = group["lr"] / group["lr_scale"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_inf"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                step_size = pow2_round(base_lr / (1 - beta1 ** state["step"])) * group["lr_scale"]
                self.update(p, state, group, step_size)
        return loss

    def update(self, p: torch.Tensor, state: dict[str, Any], group: dict[str, Any], step_size: float) -> None:
        """One parameter's update, given its (already counted) state and power-of-two step size."""
        beta1, beta2 = group["betas"]
        m, v = state["exp_avg"], state["exp_inf"]
        m.lerp_(p.grad, 1 - beta1)
        torch.maximum(v.mul_(beta2), p.grad.abs(), out=v)
        v.copy_(ap2(v)).add_(group["eps"])
        p.addcdiv_(m, v, value=-step_size)
        if group["clip"] is not None:
            p.clamp_(-group["clip"], group["clip"])


def make_shift_adamax(groups: list[dict[str, Any]], cfg: dict[str, Any], device: torch.device) -> ShiftAdaMax:
    """Build ShiftAdaMax from ``optim.param_groups``'s groups and the recipe's optimizer section.

    ``lr_scale_pow2``: round each binary layer's Glorot scale to a power of two (Torch7 CIFAR-10,
    SVHN). ``norm_lr_scale``: each BN gamma (of a shift_bn / torch7_bn layer) learns at
    LR * 1/sqrt(1.5 / features) (Torch7 MNIST). ``clip_all``: clamp every parameter, not only the
    binary weights, to [-1, 1] after each step (Torch7 CIFAR-10).
    """
    out: list[dict[str, Any]] = []
    for group in groups:
        scale = group["lr_scale"]
        if cfg["lr_scale_pow2"] and scale != 1.0:
            scale = pow2_round(scale)
        params = group["params"]
        if cfg["norm_lr_scale"]:
            norm_weights = [p for p in params if getattr(p, PARAM_ROLE, None) == NORM_WEIGHT]
            for p in norm_weights:
                out.append({"params": [p], "lr_scale": 1.0 / math.sqrt(1.5 / p.numel())})
            params = [p for p in params if getattr(p, PARAM_ROLE, None) != NORM_WEIGHT]
        if params:
            out.append({**group, "params": params, "lr_scale": scale})
    for group in out:
        group["clip"] = 1.0 if cfg["clip_all"] else None
    return ShiftAdaMax(out, lr=cfg["lr"], betas=tuple(cfg["betas"]), eps=cfg["eps"])


NORMS["shift_bn"] = shift_batch_norm
NORMS["torch7_bn"] = torch7_batch_norm
OPTIMIZERS["shift_adamax"] = make_shift_adamax
register_choice("model.norm", "shift_bn", "torch7_bn")
register_choice("model.output_norm", "shift_bn", "torch7_bn")
register_choice("optimizer.name", "shift_adamax")
