"""Binarized layers: real latent weights, +1/-1 weights in the forward pass.

As in the authors' code, a binary layer keeps real-valued latent weights W (initialised
uniformly in [-H, H], H = 1), uses sign(W) in the forward pass, passes the gradient straight
through to W, and clips W to [-1, 1] after every optimizer step. Each binary layer carries
``lr_scale`` = 1/sqrt(1.5/(fan_in + fan_out)), the per-layer learning-rate scale of the
Theano code ("Glorot"); the optimizer reads it from there.

The layer binarizes only its weights: its input is whatever the previous module produced
(real pixels for the first layer, +1/-1 activations after that).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .binarize import binarize_ste, binarize_weight, sign_pm1


def glorot_lr_scale(fan_in: int, fan_out: int) -> float:
    """The Theano code's W_LR_scale = 1 / sqrt(1.5 / (fan_in + fan_out))."""
    return 1.0 / math.sqrt(1.5 / (fan_in + fan_out))


class BinaryWeightCache:
    """sign(W) of a layer's latent weight W, kept across steps (float32, and int8 where asked for).

    Whoever updates W can write the new signs straight into ``binary`` (the fused training step
    does, in the same pass) and call ``mark_current``; otherwise the cache notices that W changed
    (``Tensor._version`` moves with every in-place change: an optimizer step, load_state_dict,
    clipping) and rebinarizes before the next forward.
    """

    def __init__(self, weight: torch.Tensor, int8: bool):
        self.weight = weight
        self.binary = torch.empty(weight.shape, dtype=weight.dtype, device=weight.device)
        self.binary_i8 = torch.empty(weight.shape, dtype=torch.int8, device=weight.device) if int8 else None
        self.version = -1

    @torch.no_grad()
    def refresh(self) -> None:
        if self.version == self.weight._version:
            return
        self.binary.copy_(sign_pm1(self.weight))
        if self.binary_i8 is not None:
            self.binary_i8.copy_(self.binary)
        self.version = self.weight._version

    def mark_current(self) -> None:
        """W and the buffers were just rewritten together (by an op autograd does not see)."""
        torch.autograd.graph.increment_version(self.weight)
        self.version = self.weight._version


class _CachedSign(torch.autograd.Function):
    """Forward: the cached sign(W); backward: the gradient straight through to W, as binarize_weight."""

    @staticmethod
    def forward(ctx, weight, binary):
        return binary.view_as(binary)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _Int8Linear(torch.autograd.Function):
    """x @ sign(W).T + b for an integral x: int8 products with int32 sums, so exact; float32 gradients."""

    @staticmethod
    def forward(ctx, x, weight, bias, binary, binary_i8):
        out = torch._int_mm(x.to(torch.int8), binary_i8.t()).to(x.dtype)
        if bias is not None:
            out = out + bias
        ctx.save_for_backward(x, binary)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, grad):
        x, binary = ctx.saved_tensors
        grad_x = grad.mm(binary) if ctx.needs_input_grad[0] else None
        # g.T @ x, as autograd's backward of F.linear computes it, so the float32 sums round alike
        grad_w = grad.t().mm(x) if ctx.needs_input_grad[1] else None
        grad_b = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b, None, None


class BinaryLayer:
    """What every binary layer shares: binarized weights, clipping and the LR scale."""

    weight: torch.Tensor
    stochastic: bool
    clip_value: float
    lr_scale: float
    weight_cache: BinaryWeightCache | None = None

    def binary_weight(self) -> torch.Tensor:
        if self.weight_cache is not None:
            self.weight_cache.refresh()
            return _CachedSign.apply(self.weight, self.weight_cache.binary)
        return binarize_weight(self.weight, self.stochastic and self.training)

    def attach_weight_cache(self, int8: bool = False) -> BinaryWeightCache:
        """Keep sign(W) between steps (deterministic weights only); ``int8``: also as int8, for
        a layer whose inputs are known to be small integers (see ``int8_linear``)."""
        if self.stochastic:
            raise ValueError("stochastic binary weights are drawn anew every forward; they cannot be cached")
        self.weight_cache = BinaryWeightCache(self.weight, int8)
        return self.weight_cache

    @torch.no_grad()
    def clip_(self) -> None:
        self.weight.clamp_(-self.clip_value, self.clip_value)


class BinaryLinear(nn.Linear, BinaryLayer):
    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 stochastic: bool = False, clip_value: float = 1.0):
        super().__init__(in_features, out_features, bias=bias)
        self.stochastic, self.clip_value = stochastic, clip_value
        self.lr_scale = glorot_lr_scale(in_features, out_features)
        with torch.no_grad():
            self.weight.uniform_(-clip_value, clip_value)
            if self.bias is not None:
                self.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cache = self.weight_cache
        if cache is not None and cache.binary_i8 is not None and x.dim() == 2 and x.dtype == torch.float32:
            # the caller attached an int8 cache: it knows x holds small integers (fused_step.integral_input_scale)
            cache.refresh()
            return _Int8Linear.apply(x, self.weight, self.bias, cache.binary, cache.binary_i8)
        return F.linear(x, self.binary_weight().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


class BinaryConv2d(nn.Conv2d, BinaryLayer):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, padding: int = 1,
                 bias: bool = True, stochastic: bool = False, clip_value: float = 1.0):
        super().__init__(in_channels, out_channels, kernel_size, padding=padding, bias=bias)
        self.stochastic, self.clip_value = stochastic, clip_value
        k = kernel_size * kernel_size
        self.lr_scale = glorot_lr_scale(in_channels * k, out_channels * k)
        with torch.no_grad():
            self.weight.uniform_(-clip_value, clip_value)
            if self.bias is not None:
                self.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return self._conv_forward(x, self.binary_weight().to(x.dtype), bias)


class SignActivation(nn.Module):
    """Binarized activation: sign with the 1_{|x|<=1} STE; stochastic only while training."""

    # (x, stochastic) -> +1/-1 with the STE. The fused CPU step (train/fused_step.py) sets a C++ form with
    # the same numbers on the instance.
    binarize = staticmethod(binarize_ste)

    def __init__(self, stochastic: bool = False):
        super().__init__()
        self.stochastic = stochastic

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.binarize(x, self.stochastic and self.training)

    def extra_repr(self) -> str:
        return f"stochastic={self.stochastic}"


def binary_layers(model: nn.Module) -> list[BinaryLayer]:
    return [m for m in model.modules() if isinstance(m, BinaryLayer)]


def clip_weights_(model: nn.Module) -> None:
    """Clip every binary layer's latent weights to [-clip, clip]; call after each optimizer step."""
    for layer in binary_layers(model):
        layer.clip_()
