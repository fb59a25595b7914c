"""Normalization layers: exact BN and the paper's shift-based BN (Algorithm 3).

Shift-based BN replaces multiplications by AP2(x) = sign(x) * 2^round(log2|x|), so that on
hardware they become bit shifts. It follows the authors' Torch7 code (itayhubara/BinaryNet:
``SpatialBatchNormalizationShiftPow2.lua`` / ``BatchNormalizationShiftPow2.lua``), including where
the code differs from the paper's pseudo-code (noted below).

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

``NORMS`` is the table a recipe's ``model.norm`` and ``model.output_norm`` choose from.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .binarize import ap2


def batch_norm(dims: int, features: int, eps: float, momentum: float) -> nn.Module:
    cls = nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d
    return cls(features, eps=eps, momentum=momentum)


# Parameters of a normalization layer carry this attribute so that an optimizer can give them a
# learning rate of their own (the Torch7 MNIST model does); the value says which parameter it is.
PARAM_ROLE = "bnn_role"
NORM_WEIGHT, NORM_BIAS = "norm_weight", "norm_bias"


def _tag_norm_parameters(module: nn.Module) -> None:
    setattr(module.weight, PARAM_ROLE, NORM_WEIGHT)
    setattr(module.bias, PARAM_ROLE, NORM_BIAS)


def _reduce_dims(x: torch.Tensor) -> tuple[int, ...]:
    return (0,) if x.dim() == 2 else (0, *range(2, x.dim()))


def _per_feature(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(C,) -> shape that broadcasts over x's feature dimension 1."""
    return v.to(x.dtype).view(1, -1, *([1] * (x.dim() - 2)))


def _statistics_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


class ShiftBatchNormFunction(torch.autograd.Function):
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

    # Training mode: (x, weight, bias, eps) -> (out, batch mean, batch 1/sqrt(var + eps)). The fused CPU
    # step (train/fused_step.py) sets a C++ form with the same numbers on the instance.
    training_function = staticmethod(ShiftBatchNormFunction.apply)

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
            out, mean, inv_std = self.training_function(x, self.weight, self.bias, self.eps)
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


# norm kind -> factory(dims, features, eps, momentum)
NORMS: dict[str, Callable[[int, int, float, float], nn.Module]] = {
    "bn": batch_norm, "shift_bn": shift_batch_norm, "torch7_bn": torch7_batch_norm,
}
