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
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from .binarize import binarize_ste, binarize_weight


def glorot_lr_scale(fan_in: int, fan_out: int) -> float:
    """The Theano code's W_LR_scale = 1 / sqrt(1.5 / (fan_in + fan_out))."""
    return 1.0 / math.sqrt(1.5 / (fan_in + fan_out))


class WeightSource(Protocol):
    """Where a binary layer takes its +1/-1 weights from instead of binarizing W in every forward
    (the fused training step keeps them between steps). The layer calls it without knowing more."""

    def binary_weight(self) -> torch.Tensor:
        """sign(W) for the forward, the gradient passing straight through to W."""

    def linear(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
        """x @ sign(W).T + bias by a route of its own, or None for the layer's float product."""


class BinaryLayer:
    """What every binary layer shares: binarized weights, clipping and the LR scale."""

    weight: torch.Tensor
    stochastic: bool
    clip_value: float
    lr_scale: float
    weight_source: WeightSource | None = None

    def binary_weight(self) -> torch.Tensor:
        if self.weight_source is not None:
            return self.weight_source.binary_weight()
        return binarize_weight(self.weight, self.stochastic and self.training)

    @torch.no_grad()
    def clip_(self) -> None:
        self.weight.clamp_(-self.clip_value, self.clip_value)


class BinaryLinear(nn.Linear, BinaryLayer):
    """A linear layer with +1/-1 weights: sign(W) forward, the gradient straight through to the latent W.

    W starts uniform in [-clip_value, clip_value]; ``clip_weights_`` keeps it there after each step.
    ``stochastic``: binarize W stochastically while training (+1 with probability hard_sigmoid(W)).
    """

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
        if self.weight_source is not None:
            out = self.weight_source.linear(x, self.bias)
            if out is not None:
                return out
        # The bias is added after the product rather than inside it (addmm, whose sums the BLAS may start
        # from the bias): the product of +-1 inputs is then an exact integer however it is computed, so
        # the fused step's integer products (int8, XNOR) give the same output to the bit.
        out = F.linear(x, self.binary_weight().to(x.dtype))
        return out if self.bias is None else out + self.bias.to(x.dtype)


class BinaryConv2d(nn.Conv2d, BinaryLayer):
    """A square 2-D convolution with +1/-1 weights, stride 1; as ``BinaryLinear`` otherwise. ``padding``
    defaults to 1, "same" for the default 3 x 3 kernel (export takes odd kernels with padding kernel_size // 2)."""

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
    """The model's binary layers (``BinaryLinear``, ``BinaryConv2d``), in module order."""
    return [m for m in model.modules() if isinstance(m, BinaryLayer)]


def clip_weights_(model: nn.Module) -> None:
    """Clip every binary layer's latent weights to [-clip, clip]; call after each optimizer step."""
    for layer in binary_layers(model):
        layer.clip_()
